"""JPEG and WebP at the bpp of a shipped model, per image of a folder.

  python -m experiments.matched_bpp --model m2t-small-l0.0025 --images VAL_DIR \
      [--output-dir out/matched_bpp]

For each image: the model's real bpp and PSNR (compress/decompress), and JPEG /
WebP at the quality whose bpp is closest (``demo.matched_quality``). With a
single RD point per model a BD-rate is not defined; this is the comparison that
is. Prints a markdown table (means in the last row) and writes
``<output-dir>/matched_bpp.json``.
"""

import numpy as np

from experiments import common
from m2t_jax.app import demo
from m2t_jax.evaluation import metrics


def build_parser():
  p = common.parser("matched_bpp", __doc__)
  common.add(p, "--model", default=None, detail="default: the default shipped model")
  common.add(p, "--images", required=True)
  common.add_output(p, "matched_bpp")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  codec = common.load_model(args.model)
  rows = []
  for image_name, image in common.load_images(args):
    pixels = image.shape[0] * image.shape[1]
    data = codec.compress(image)
    row = {"image": image_name, "m2t_bpp": 8 * len(data) / pixels,
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
  common.write_json(common.output_path(args, ".json"),
                    {"model": codec.name, "rows": rows, "mean": mean}, args)


if __name__ == "__main__":
  main()
