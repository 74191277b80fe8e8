"""What a nested model's exits compete with: an un-nested M2T cut to fewer
blocks, and the same M2T run with fewer decode steps S.

  python -m experiments.depth_baselines --model m2t-small-l0.0025 --images VAL \
      --depths 1 2 4 --decode-steps 4 8 --image-size 768x512 \
      --output-dir experiments/results --output-name depth_baselines_small

For every (depth d, S): the M2T of --model with only its first d transformer
blocks (then its own final LayerNorm and head: exactly what a nested model's
early exit would be if it had no head of its own) and schedule.num_steps = S.
Rate: the one-pass estimate (``Codec.estimate``: continuous bin masses, bits /
pixel, header excluded) on every image of --images (mean, min, max); transformer
decode time (the S cached decode steps, model only, median of --repeats) on a
tiled photo of --image-size. Compare with ``size_schedules`` (the exits
of a nested model, which were trained to be cut there). JSON + markdown.
"""

import copy
import json

import jax
import numpy as np

from experiments import bench_decode, common
from m2t_jax import Codec


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


def build_parser():
  p = common.parser("depth_baselines", __doc__)
  common.add(p, "--model", required=True, detail="an M2T model")
  common.add(p, "--images", required=True)
  common.add(p, "--depths", nargs="+", type=int, default=[1, 2, 4])
  common.add(p, "--decode-steps", nargs="+", type=int, default=[4, 8])
  common.add(p, "--image-size", default="768x512")
  common.add(p, "--repeats", type=int, default=3)
  common.add_output(p, "depth_baselines")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  base = common.load_model(args.model, kind="m2t")
  photos = common.load_images(args)
  width, height = map(int, args.image_size.split("x"))
  timing_image = bench_decode._photo(width, height)
  rows = []
  for depth in args.depths:
    for s in args.decode_steps:
      codec = truncated(base, depth, s)
      bpp = [codec.estimate(image)["bpp"] for _, image in photos]
      tokens, valid = bench_decode.latent_tokens(codec, timing_image)
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
            "time_image_size": args.image_size,
            "device": jax.devices()[0].device_kind, "rows": rows}
  common.write_json(common.output_path(args, ".json"), record, args)
  lines = [f"# Truncated / fewer-step M2T: {args.model}", "",
           f"Rate: one-pass estimate, mean (min-max) over {len(photos)} images of "
           f"{args.images}; transformer decode time on a {args.image_size} tiled "
           f"photo ({record['device']}).", "",
           "| blocks | S | est. bpp | min-max | vs full | transformer s |",
           "|---:|---:|---:|---|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['depth']} | {r['S']} | {r['bpp']:.4f} | {r['bpp_min']:.4f}-"
                 f"{r['bpp_max']:.4f} | {r['vs_full_pct']:+.1f}% | "
                 f"{r['transformer_s']:.3f} |")
  text = "\n".join(lines) + "\n"
  with open(common.output_path(args, ".md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
