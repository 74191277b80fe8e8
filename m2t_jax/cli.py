"""The ``m2t`` command.

  m2t summary CONFIG [SIZE]   parameter counts of a config (m2t paper,
                              or m2t_jax/configs/mt.py:small)

``compress``, ``decompress``, ``info`` and ``demo`` arrive with the codec and
shipped-model work (issues 3 and 7); until then they exit with a message.
"""

import argparse
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="m2t", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("summary", help="print a config and its parameter counts")
  p.add_argument("config", help="'m2t' | 'mt' | path/to/config.py:SIZE")
  p.add_argument("size", nargs="?", default=None, help="paper | small | tiny")
  for name in ("compress", "decompress", "info", "demo"):
    sub.add_parser(name, help="not available yet").add_argument("args", nargs="*")
  args = parser.parse_args(argv)
  if args.command == "summary":
    from m2t_jax import summary
    try:
      print(summary.format_summary(summary.load_config(args.config, args.size)))
    except (ValueError, OSError) as e:
      print(f"m2t: error: {e}", file=sys.stderr)
      return 2
    return 0
  print(f"m2t: error: '{args.command}' is not available yet in this version "
        "(see README.md).", file=sys.stderr)
  return 2


if __name__ == "__main__":
  raise SystemExit(main())
