"""One variable-rate model against fixed-lambda models: BD-rate over their
common range, photo by photo.

    python -m experiments.variable_rate --model FIXED_A FIXED_B FIXED_C \
        --variable-model VARIABLE --images PHOTOS --split val \
        --qualities 0 16.67 33.33 50 66.67 83.33 100 --output-dir out/variable_rate

Every photo of the --split of --images is coded for real by each fixed-lambda
--model (one RD point each: the anchor curve) and by the --variable-model at each
of --qualities (the test curve), all with E's latent (effort 0: the models, not
the encoder's search, are compared). Reports, per photo and on the curve of the
photos' mean bpp and PSNR, the BD-rate (``evaluation.bdrate``, pchip, over the
PSNR range both curves cover) of the variable-rate model against the fixed
ones, and the variable-rate model's bpp range (its lowest and highest quality).

Writes ``<output-name>.json`` (rows per photo and point, summary) and a
Markdown table ``<output-name>.md``.
"""

import os

import numpy as np

from experiments import common
from m2t_jax import images
from m2t_jax.evaluation import bdrate, metrics, splits


def point(codec, image, quality=None) -> dict:
  """Real bytes of ``image`` at ``quality`` (None for a fixed-rate model)."""
  data = codec.compress(image, effort=0, quality=quality)
  decoded = codec.decompress(data)
  h, w = image.shape[:2]
  return {"bpp": 8 * len(data) / (h * w), "psnr": metrics.psnr_rgb(image, decoded)}


def _bd(anchor, test):
  try:
    return bdrate.bd_rate([r["bpp"] for r in anchor], [r["psnr"] for r in anchor],
                          [r["bpp"] for r in test], [r["psnr"] for r in test])
  except ValueError:  # no overlap, or a curve that is not strictly monotone
    return None


def summarise(rows, fixed_names, qualities) -> dict:
  photos = sorted({r["image"] for r in rows})
  per_photo = {}
  for photo in photos:
    anchor = [r for r in rows if r["image"] == photo and r["quality"] is None]
    test = [r for r in rows if r["image"] == photo and r["quality"] is not None]
    per_photo[photo] = _bd(anchor, test)
  mean = lambda sel, key: float(np.mean([r[key] for r in rows if sel(r)]))  # noqa: E731
  fixed = [lambda r, m=m: r["model"] == m and r["quality"] is None for m in fixed_names]
  variable = [lambda r, q=q: r["quality"] == q for q in qualities]
  anchor_curve = [{k: mean(sel, k) for k in ("bpp", "psnr")} for sel in fixed]
  test_curve = [{k: mean(sel, k) for k in ("bpp", "psnr")} for sel in variable]
  valid = [v for v in per_photo.values() if v is not None]
  return {"photos": len(photos),
          "bd_rate_pct": float(np.mean(valid)) if valid else None,
          "bd_rate_photos": len(valid),
          "bd_rate_mean_curve_pct": _bd(anchor_curve, test_curve),
          "anchor_curve": anchor_curve, "test_curve": test_curve,
          "qualities": list(qualities), "per_photo_bd_rate_pct": per_photo}


def markdown(summary, fixed_names, variable_name) -> str:
  fmt = lambda v: "n/a" if v is None else f"{v:+.2f}%"  # noqa: E731
  lines = ["| curve | point | bpp | PSNR (dB) |", "|---|---|---|---|"]
  for name, p in zip(fixed_names, summary["anchor_curve"], strict=True):
    lines.append(f"| fixed | {name} | {p['bpp']:.4f} | {p['psnr']:.2f} |")
  for q, p in zip(summary["qualities"], summary["test_curve"], strict=True):
    lines.append(f"| variable | {variable_name} @ quality {q:g} | {p['bpp']:.4f} "
                 f"| {p['psnr']:.2f} |")
  lines += ["", f"BD-rate of the variable-rate model against the fixed ones: "
            f"{fmt(summary['bd_rate_pct'])} (mean of {summary['bd_rate_photos']} photos), "
            f"{fmt(summary['bd_rate_mean_curve_pct'])} (mean curve of "
            f"{summary['photos']} photos)."]
  return "\n".join(lines) + "\n"


def build_parser():
  p = common.parser("variable_rate", __doc__)
  common.add(p, "--model", nargs="+", required=True,
             detail="here: the fixed-lambda models, one RD point each (the anchor)")
  common.add(p, "--variable-model", required=True)
  common.add(p, "--images", required=True)
  common.add(p, "--split", choices=splits.CHOICES, default="val")
  common.add(p, "--max-images", type=int, default=0)
  common.add(p, "--qualities", type=float, nargs="+",
             default=[0, 100 / 6, 200 / 6, 50, 400 / 6, 500 / 6, 100],
             detail="here: of the variable-rate model, 0..100")
  common.add_output(p, "variable_rate")
  return p


def main(argv=None) -> int:
  args = common.parse(build_parser(), argv)
  paths = splits.list_split(args.images, args.split)
  paths = paths[:args.max_images] if args.max_images > 0 else paths
  fixed = [common.load_model(spec) for spec in args.model]
  variable = common.load_model(args.variable_model)
  if not variable.variable_rate or any(c.variable_rate for c in fixed):
    raise SystemExit("--variable-model must be a variable-rate model and every --model "
                     "a fixed-rate one.")
  rows = []
  for path in paths:
    image, _ = images.read_rgb(path)
    name = os.path.relpath(path, args.images)
    for spec, codec in zip(args.model, fixed, strict=True):
      rows.append({"image": name, "model": spec, "quality": None, "lmbda": codec.lmbda,
                   **point(codec, image)})
    for q in args.qualities:
      variable.quality = q
      rows.append({"image": name, "model": args.variable_model, "quality": q,
                   "lmbda": variable.lmbda, **point(variable, image, q)})
    print(name, " ".join(f"{r['bpp']:.3f}/{r['psnr']:.2f}" for r in rows
                         if r["image"] == name), flush=True)
  summary = summarise(rows, args.model, args.qualities)
  table = markdown(summary, args.model, args.variable_model)
  print(table)
  common.write_json(common.output_path(args, ".json"),
                    {"fixed_models": args.model, "variable_model": args.variable_model,
                     "split": args.split, "summary": summary, "rows": rows}, args)
  with open(common.output_path(args, ".md"), "w") as f:
    f.write(f"`{common.command(args)}`\n\n{table}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
