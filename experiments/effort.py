"""Encoder effort levels (``m2t compress --effort``) measured photo by photo.

    python -m experiments.effort --model grouped-small-l0.0025 --images CORPUS --split val \
        --max-images 12 --output-dir out/effort

For every photo of the --split of --images (default the validation split: this
study chooses the levels' settings), every model and every effort level
(``m2t_jax.refine.EFFORTS``; --settings adds candidate settings
STEPS:LEARNING_RATE:RATE_TARGET beside them), codes the photo for real and
reports:

* ``encode_s_per_mp``: seconds of ``analyze`` + ``compress_latent`` per megapixel,
  compilation excluded (each model and photo size is run once untimed first; that
  run's seconds are ``compile_s`` in the per-size rows);
* ``bpp`` (real bytes), ``psnr``, the RD loss ``loss`` = estimated bpp +
  lambda * MSE (0..255; what refinement minimises, ``refine.loss_fn``) and
  ``real_loss`` = real bpp + lambda * MSE of the decoded image;
* ``rate_change_pct``: the change of rate at equal MSE against effort 0, to first
  order, 100 (real_loss - real_loss at effort 0) / bpp at effort 0 (the model's
  RD curve has slope -lambda at the rate it was trained for);
* ``bd_rate_pct`` (two models or more, one RD point each): the BD-rate
  (``evaluation.bdrate``, pchip) against effort 0, photo by photo and averaged,
  and ``bd_rate_mean_curve_pct`` on the curve of the photos' mean bpp and PSNR.

Writes ``<output-name>.json`` (rows per photo, summary per level) and a Markdown
table ``<output-name>.md``.
"""

import os
import time

import jax.numpy as jnp
import numpy as np

from experiments import common
from m2t_jax import images, refine
from m2t_jax import model as model_lib
from m2t_jax.coding import rate_code
from m2t_jax.evaluation import bdrate, metrics, splits


def parse_setting(text: str) -> refine.RefineSettings:
  """STEPS:LEARNING_RATE:RATE_TARGET -> RefineSettings (ValueError if malformed)."""
  parts = text.split(":")
  if len(parts) != 3:
    raise ValueError(f"--settings {text!r}: expected STEPS:LEARNING_RATE:RATE_TARGET.")
  return refine.RefineSettings(steps=int(parts[0]), learning_rate=float(parts[1]),
                               rate_target=parts[2])


def photo_paths(args) -> list[str]:
  """The --split files of --images, then --only (names relative to --images) and
  --max-images. ValueError for a name of --only that is not in the split."""
  paths = splits.list_split(args.images, args.split)
  if args.only:
    by_name = {os.path.relpath(p, args.images): p for p in paths}
    missing = [n for n in args.only if n not in by_name]
    if missing:
      raise ValueError(f"--only: {missing} not among the {args.split!r} images of "
                       f"{args.images!r}.")
    paths = [by_name[n] for n in args.only]
  return paths[:args.max_images] if args.max_images > 0 else paths


def measure(codec, image, settings) -> dict:
  """One coding of ``image`` with ``settings``: timings, bytes, quality, losses."""
  h, w = image.shape[:2]
  # The trade-off the model codes at: its training lambda, or a variable-rate
  # model's at codec.quality (its level conditions the loss too).
  lmbda = codec.lmbda
  level = rate_code.level_of_code(codec.rate_code())
  t0 = time.perf_counter()
  y_hat = codec.analyze(image, refine=settings)
  data = codec.compress_latent(y_hat, h, w)
  seconds = time.perf_counter() - t0
  decoded = codec.decompress(data)
  x = model_lib.pad_to_multiple(jnp.asarray(image, jnp.float32)[None])
  loss = refine.loss_fn(codec.model, codec.params, x, h, w, lmbda,
                        None if level is None else float(level))
  mse = float(np.mean(np.square(decoded.astype(np.float64) - image)))
  bpp = 8 * len(data) / (h * w)
  return {"encode_s": seconds, "encode_s_per_mp": seconds / (h * w / 1e6), "bpp": bpp,
          "psnr": metrics.psnr_rgb(image, decoded),
          "loss": float(loss(jnp.asarray(y_hat, jnp.float32))),
          "real_loss": bpp + lmbda * mse,
          "decoded_equals_estimate": bool(np.array_equal(
              decoded, codec.reconstruct(y_hat, h, w)))}


def _mean(rows, key):
  return float(np.mean([r[key] for r in rows]))


def summarise(rows, labels, models) -> list[dict]:
  """Per level: means over photos and models, rate change and BD-rate vs effort 0."""
  base = {(r["image"], r["model"]): r for r in rows if r["level"] == labels[0]}
  summary = []
  for label in labels:
    mine = [r for r in rows if r["level"] == label]
    row = {"level": label, "settings": mine[0]["settings"], "photos": len(mine) // len(models)}
    for key in ("encode_s_per_mp", "bpp", "psnr", "loss", "real_loss"):
      row[key] = _mean(mine, key)
    row["rate_change_pct"] = float(np.mean([
        100 * (r["real_loss"] - base[r["image"], r["model"]]["real_loss"])
        / base[r["image"], r["model"]]["bpp"] for r in mine]))
    row["all_decoded_equal_estimate"] = all(r["decoded_equals_estimate"] for r in mine)
    if len(models) >= 2:
      per_photo = []
      for photo in sorted({r["image"] for r in mine}):
        a = [base[photo, m] for m in models]
        t = [next(r for r in mine if r["image"] == photo and r["model"] == m) for m in models]
        try:
          per_photo.append(bdrate.bd_rate([r["bpp"] for r in a], [r["psnr"] for r in a],
                                          [r["bpp"] for r in t], [r["psnr"] for r in t]))
        except ValueError:  # curves that do not overlap: left out, counted
          pass
      row["bd_rate_pct"] = float(np.mean(per_photo)) if per_photo else None
      row["bd_rate_photos"] = len(per_photo)
      curve = [[_mean([r for r in group if r["model"] == m], k) for m in models]
               for group in (list(base.values()), mine) for k in ("bpp", "psnr")]
      try:
        row["bd_rate_mean_curve_pct"] = bdrate.bd_rate(*curve)
      except ValueError:
        row["bd_rate_mean_curve_pct"] = None
    summary.append(row)
  return summary


def markdown(summary) -> str:
  bd = "bd_rate_pct" in summary[0]
  head = ("| level | settings | encode s/MP | bpp | PSNR (dB) | RD loss | real RD loss "
          "| rate change at equal MSE |" + (" BD-rate (photos) | BD-rate (mean curve) |"
                                            if bd else ""))
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
  for r in summary:
    line = (f"| {r['level']} | {r['settings']} | {r['encode_s_per_mp']:.2f} | {r['bpp']:.4f} "
            f"| {r['psnr']:.2f} | {r['loss']:.4f} | {r['real_loss']:.4f} "
            f"| {r['rate_change_pct']:+.2f}% |")
    if bd:
      line += (f" {fmt(r['bd_rate_pct'], '+.2f')}% | "
               f"{fmt(r['bd_rate_mean_curve_pct'], '+.2f')}% |")
    lines.append(line)
  return "\n".join(lines) + "\n"


def build_parser():
  p = common.parser("effort", __doc__)
  common.add(p, "--model", nargs="+", required=True,
             detail="several: one RD point each, for the BD-rate")
  common.add(p, "--images", required=True)
  common.add(p, "--split", choices=splits.CHOICES, default="val")
  common.add(p, "--only", nargs="+", default=None)
  common.add(p, "--max-images", type=int, default=0)
  common.add(p, "--efforts", type=int, nargs="+", default=None,
             detail="default: every level")
  common.add(p, "--settings", nargs="+", default=[],
             detail="measured beside the levels, as candidates for them")
  common.add_output(p, "effort")
  return p


def main(argv=None) -> int:
  args = common.parse(build_parser(), argv)
  efforts = args.efforts if args.efforts is not None else list(range(refine.MAX_EFFORT + 1))
  levels = [(str(e), refine.RefineSettings.for_effort(e)) for e in efforts]
  levels += [(text, parse_setting(text)) for text in args.settings]
  if levels[0][1].steps != 0:
    raise ValueError("the first level is the anchor of the comparisons: give effort 0 first")
  paths = photo_paths(args)
  codecs = [common.load_model(spec) for spec in args.model]
  rows, compile_rows = [], []
  for codec in codecs:
    warmed = set()
    for path in paths:
      image, _ = images.read_rgb(path)
      name = os.path.relpath(path, args.images)
      if image.shape[:2] not in warmed:  # compiles E, every refinement part, coding
        t0 = time.perf_counter()
        for target in sorted({s.rate_target for _, s in levels}):
          measure(codec, image, refine.RefineSettings(steps=1, rate_target=target))
        compile_rows.append({"model": codec.name, "height": image.shape[0],
                             "width": image.shape[1], "compile_s": time.perf_counter() - t0})
        warmed.add(image.shape[:2])
      for label, settings in levels:
        row = {"image": name, "model": codec.name, "lmbda": codec.lmbda,
               "level": label, "settings": f"{settings.steps}:{settings.learning_rate}:"
                                           f"{settings.rate_target}",
               **measure(codec, image, settings)}
        rows.append(row)
        print(f"{name} {codec.name} effort {label}: {row['encode_s_per_mp']:.2f} s/MP, "
              f"{row['bpp']:.4f} bpp, {row['psnr']:.2f} dB, loss {row['loss']:.4f}",
              flush=True)
  summary = summarise(rows, [label for label, _ in levels], [c.name for c in codecs])
  table = markdown(summary)
  print(table)
  common.write_json(common.output_path(args, ".json"),
                    {"models": [c.name for c in codecs], "split": args.split,
                     "summary": summary, "compilation": compile_rows, "rows": rows}, args)
  with open(common.output_path(args, ".md"), "w") as f:
    f.write(f"`{common.command(args)}`\n\n{table}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
