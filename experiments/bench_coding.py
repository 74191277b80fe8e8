"""Coding throughput: table building and range coding, and their share of decode.

  python -m experiments.bench_coding [--sizes tiny small] [--output-dir out/bench_coding]

For the tiny and small configs (MT and M2T) on a 768x512 photo: symbols coded,
table-building and range-decoding seconds and throughput (symbols/s), and their
share of the full decode time (``Codec.decompress``). Uses the measurements of
``bench_decode.bench_one``; random weights (a trained model codes fewer escapes,
so range coding only gets faster). Writes ``{"records": [...]}`` to
``<output-dir>/bench_coding.json``.
"""

import json

from experiments import bench_decode, common
from m2t_jax import get_config
from m2t_jax.entropy import registry


def build_parser():
  p = common.parser("bench_coding", __doc__)
  common.add(p, "--sizes", nargs="+", default=["tiny", "small"])
  common.add(p, "--image-size", default="768x512")
  common.add(p, "--repeats", type=int, default=3)
  common.add_output(p, "bench_coding")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  width, height = (int(v) for v in args.image_size.split("x"))
  records = []
  for size in args.sizes:
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
  common.write_json(common.output_path(args, ".json"), {"records": records}, args)


if __name__ == "__main__":
  main()
