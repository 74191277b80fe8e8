"""What a nested model's exits compete with: an un-nested M2T cut to fewer
blocks, and the same M2T run with fewer decode steps S.

  python experiments/depth_baselines.py --model m2t-small-l0.0025 --images VAL \
      --depths 1 2 4 --steps 4 8 --time-image-size 768x512 \
      --output experiments/results/depth_baselines_small

For every (depth d, S): the M2T of --model with only its first d transformer
blocks (then its own final LayerNorm and head: exactly what a nested model's
early exit would be if it had no head of its own) and schedule.num_steps = S.
Rate: the one-pass estimate (``Codec.estimate``: continuous bin masses, bits /
pixel, header excluded) on every image of --images (mean, min, max); transformer
decode time (the S cached decode steps, model only, median of --repeats) on a
tiled photo of --time-image-size. Compare with ``size_schedules.py`` (the exits
of a nested model, which were trained to be cut there). JSON + markdown.
"""

import argparse
import copy
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_decode  # noqa: E402

from m2t_jax import Codec, images  # noqa: E402


def truncated(codec: Codec, depth: int, num_steps: int) -> Codec:
  """``codec``'s model with only its first ``depth`` blocks, decoding in
  ``num_steps`` steps (same autoencoder, embeddings, final norm and head)."""
  config = copy.deepcopy(codec.config.as_configdict())  # not base's own
  layers = config.transformer.num_layers
  if not 1 <= depth <= layers:
    raise SystemExit(f"--depths: {depth} is not in 1..{layers}")
  config.transformer.num_layers = depth
  config.schedule.num_steps = num_steps
  params = jax.tree.map(lambda x: x, codec.params)  # a copy of the containers
  blocks = params["entropy_model"]["transformer"]
  for i in range(depth, layers):
    del blocks[f"block_{i}"]
  return Codec(config, params)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True, help="an M2T model: folder or shipped name")
  p.add_argument("--images", required=True)
  p.add_argument("--depths", nargs="+", type=int, default=[1, 2, 4])
  p.add_argument("--steps", nargs="+", type=int, default=[4, 8])
  p.add_argument("--time-image-size", default="768x512")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--output", default="experiments/results/depth_baselines")
  args = p.parse_args(argv)
  base = Codec.load(args.model)
  if base.config.model != "m2t":
    raise SystemExit(f"--model: an M2T model is needed, not {base.config.model!r}")
  photos = [(os.path.basename(f), images.load_image(f))
            for f in images.list_images(args.images)]
  width, height = map(int, args.time_image_size.split("x"))
  timing_image = bench_decode._photo(width, height)
  rows = []
  for depth in args.depths:
    for s in args.steps:
      codec = truncated(base, depth, s)
      bpp = [codec.estimate(image)["bpp"] for _, image in photos]
      tokens, valid = bench_decode._tokens(codec, timing_image)
      run = bench_decode._transformer_fn(codec, tokens, valid)
      jax.block_until_ready(run())  # compile
      row = {"depth": depth, "S": s, "bpp": float(np.mean(bpp)), "bpp_min": min(bpp),
             "bpp_max": max(bpp), "bpp_per_image": bpp,
             "transformer_s": bench_decode._median_time(run, args.repeats)}
      rows.append(row)
      print(json.dumps(row), flush=True)
  ref = next((r for r in rows if r["depth"] == max(args.depths)
              and r["S"] == base.config.schedule.num_steps), rows[0])
  for r in rows:
    r["vs_full_pct"] = 100 * (r["bpp"] / ref["bpp"] - 1)
  record = {"model": args.model, "images": [n for n, _ in photos],
            "time_image_size": args.time_image_size,
            "device": jax.devices()[0].device_kind, "rows": rows}
  os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
  with open(args.output + ".json", "w") as f:
    json.dump(record, f, indent=1)
  lines = [f"# Truncated / fewer-step M2T: {args.model}", "",
           f"Rate: one-pass estimate, mean (min-max) over {len(photos)} images of "
           f"{args.images}; transformer decode time on a {args.time_image_size} tiled "
           f"photo ({record['device']}).", "",
           "| blocks | S | est. bpp | min-max | vs full | transformer s |",
           "|---:|---:|---:|---|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['depth']} | {r['S']} | {r['bpp']:.4f} | {r['bpp_min']:.4f}-"
                 f"{r['bpp_max']:.4f} | {r['vs_full_pct']:+.1f}% | "
                 f"{r['transformer_s']:.3f} |")
  text = "\n".join(lines) + "\n"
  with open(args.output + ".md", "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
