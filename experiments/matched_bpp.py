"""JPEG and WebP at the bpp of a shipped model, per image of a folder.

  python experiments/matched_bpp.py --model m2t-small-l0.0025 --images VAL_DIR \
      --output out/matched_bpp.json

For each image: the model's real bpp and PSNR (compress/decompress), and JPEG /
WebP at the quality whose bpp is closest (``demo.matched_quality``). With a
single RD point per model a BD-rate is not defined; this is the comparison that
is. Prints a markdown table (means in the last row) and writes JSON.
"""

import argparse
import json
import os

import numpy as np

from m2t_jax import Codec
from m2t_jax.app import demo
from m2t_jax.evaluation import metrics, rd


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default=None, help="shipped model name or folder")
  parser.add_argument("--images", required=True)
  parser.add_argument("--output", default="out/matched_bpp.json")
  args = parser.parse_args(argv)
  codec = Codec.load(args.model)
  rows = []
  for item in rd.folder_images(args.images):
    image = item.load()
    pixels = image.shape[0] * image.shape[1]
    data = codec.compress(image)
    row = {"image": item.name, "m2t_bpp": 8 * len(data) / pixels,
           "m2t_psnr": metrics.psnr_rgb(image, codec.decompress(data))}
    for name in ("jpeg", "webp"):
      _, encoded, decoded = demo.matched_quality(image, name, row["m2t_bpp"])
      row[f"{name}_bpp"] = 8 * len(encoded) / pixels
      row[f"{name}_psnr"] = metrics.psnr_rgb(image, decoded)
    rows.append(row)
  keys = ["m2t_bpp", "m2t_psnr", "jpeg_bpp", "jpeg_psnr", "webp_bpp", "webp_psnr"]
  mean = {"image": "mean", **{k: float(np.mean([r[k] for r in rows])) for k in keys}}
  lines = ["| image | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
  for r in rows + [mean]:
    lines.append(f"| {r['image']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
  print("\n".join(lines))
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump({"model": codec.name, "rows": rows, "mean": mean}, f, indent=1)


if __name__ == "__main__":
  main()
