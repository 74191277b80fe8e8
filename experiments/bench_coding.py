"""Coding throughput: table building and range coding, and their share of decode.

  python experiments/bench_coding.py --output out/bench_coding.json

For the tiny and small configs (MT and M2T) on a 768x512 photo: symbols coded,
table-building and range-decoding seconds and throughput (symbols/s), and their
share of the full decode time (``Codec.decompress``). Uses the measurements of
``bench_decode.bench_one``; random weights (a trained model codes fewer escapes,
so range coding only gets faster).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode  # noqa: E402

from m2t_jax import get_config  # noqa: E402
from m2t_jax.entropy import registry  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--configs", nargs="+", default=["tiny", "small"])
  parser.add_argument("--image-size", default="768x512")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--output", default="out/bench_coding.json")
  args = parser.parse_args(argv)
  width, height = (int(v) for v in args.image_size.split("x"))
  records = []
  for size in args.configs:
    for kind in registry.names():
      config = get_config(kind, size)
      r = bench_decode.bench_one(size, kind, config.schedule.num_steps, width, height,
                                 args.repeats)
      symbols = (-(-height // 16)) * (-(-width // 16)) * config.latent_channels
      rec = {"config": size, "model": kind, "image_size": args.image_size, "symbols": symbols,
             "table_radius": config.gmm.table_radius,
             "tables_s": r["tables_s"], "range_coding_s": r["range_coding_s"],
             "tables_symbols_per_s": symbols / r["tables_s"],
             "range_coding_symbols_per_s": symbols / r["range_coding_s"],
             "full_decode_s": r["full_decode_s"],
             "tables_share": r["tables_s"] / r["full_decode_s"],
             "range_coding_share": r["range_coding_s"] / r["full_decode_s"],
             "coding_share": r["coding_s"] / r["full_decode_s"], "device": r["device"]}
      records.append(rec)
      print(json.dumps(rec), flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(records, f, indent=1)


if __name__ == "__main__":
  main()
