"""BD-rate table and RD plot of results files against published curves.

    python -m experiments.rd_table results.json [more.json ...] \
        [--anchor vtm | path/to/anchor.json] [--dataset kodak] \
        [--references default | all | none | NAME [NAME ...]] \
        [--output-dir out/rd_table] [--output-name rd_table]

Inputs are CompressAI-schema results files (``m2t eval``, the per-codec files
of ``experiments.classical``, CompressAI's own), or JSON lists of such
documents (``classical.py``'s combined file). Each document is one curve.

For every curve (ours and the reference curves drawn beside them) the table
gives the BD-rate against the anchor (default: VTM on Kodak, from
``third_party/rd_curves/<dataset>/``) with PCHIP interpolation and, beside it,
the classic cubic fit, both over the PSNR range where the curve and the anchor
overlap (``m2t_jax.evaluation.bdrate``). Negative: fewer bits than the anchor at equal
PSNR. A curve without overlap, or with too few points for a method, gets
"n/a" and the reason.

Writes ``<output-name>.md`` (markdown table), ``.png`` (bpp vs PSNR-RGB, ours
solid, references dashed) and ``.json`` (the table's numbers) in ``--output-dir``.

``--per-image`` adds the spread behind the mean curves: each curve's BD-rate
(PCHIP) against the anchor photo by photo, from the per-image files written
beside the results (``X.per_image.json`` for ``m2t eval --output X.json``;
``X.per_image.json`` filtered by codec for ``classical``'s ``X.CODEC.json``),
with the mean, median and range over photos and how many photos it wins. The
BD-rate of the mean curves is what the table above reports; a gain that only a
few photos carry shows here. The anchor must then be a results file.

Compare like with like: the published curves are averages over their data set
(Kodak: 24 images, 768x512). A results file measured on other images is
flagged in the table's notes; its BD-rate against Kodak VTM is then only an
indication.
"""

import glob
import json
import math
import os
import sys

import numpy as np

from experiments import common
from m2t_jax.evaluation import bdrate, rd

REPO = common.ROOT
CURVES_DIR = os.path.join(REPO, "third_party", "rd_curves")
# The published curves drawn by default (Kodak): the usual points of comparison.
DEFAULT_REFERENCES = {
    "kodak": ["elic-paper", "mlicplus-c3", "cheng2020-anchor-compressai",
              "mbt2018-compressai", "bmshj2018-hyperprior-compressai", "bpg444"],
}


def load_curves(path: str) -> list[dict]:
  """The curves of a results file: [{name, bpp, psnr, file, meta}]."""
  with open(path) as f:
    doc = json.load(f)
  docs = doc if isinstance(doc, list) else [doc]
  curves = []
  for d in docs:
    if not isinstance(d, dict) or "results" not in d:
      raise ValueError(f"{path} is not a CompressAI results file (no 'results'); the "
                       "per-image files are not curves.")
    r = d["results"]
    points = [(b, p) for b, p in zip(r["bpp"], r["psnr-rgb"], strict=True)
              if b is not None and p is not None and math.isfinite(b) and math.isfinite(p)]
    points.sort()
    curves.append({"name": d.get("name") or os.path.basename(path), "file": path,
                   "bpp": [b for b, _ in points], "psnr": [p for _, p in points],
                   "meta": d.get("meta", {})})
  return curves


def reference_path(dataset: str, name: str) -> str:
  """A published curve: a path, or a name in third_party/rd_curves/<dataset>/."""
  if os.path.isfile(name):
    return name
  path = os.path.join(CURVES_DIR, dataset, f"{name}.json")
  if not os.path.isfile(path):
    known = sorted(os.path.basename(p)[:-5] for p in
                   glob.glob(os.path.join(CURVES_DIR, dataset, "*.json")))
    raise ValueError(f"No published curve {name!r} for data set {dataset!r}; known: "
                     f"{', '.join(known) or 'none (unknown data set)'}.")
  return path


def bd_row(anchor: dict, curve: dict, kind: str) -> dict:
  """BD-rates (PCHIP, cubic) of ``curve`` against ``anchor``, with reasons for n/a."""
  row = {"name": curve["name"], "file": os.path.relpath(curve["file"], REPO)
         if curve["file"].startswith(REPO) else curve["file"], "kind": kind,
         "points": len(curve["bpp"]),
         "bpp_range": [min(curve["bpp"]), max(curve["bpp"])] if curve["bpp"] else None,
         "psnr_range": [min(curve["psnr"]), max(curve["psnr"])] if curve["psnr"] else None,
         "dataset": curve["meta"].get("dataset")}
  try:
    row["overlap_db"] = list(bdrate.overlap(anchor["psnr"], curve["psnr"]))
  except ValueError:
    row["overlap_db"] = None
  for method in ("pchip", "cubic"):
    try:
      row[f"bd_rate_{method}"] = bdrate.bd_rate(anchor["bpp"], anchor["psnr"], curve["bpp"],
                                                curve["psnr"], method)
    except ValueError as e:
      row[f"bd_rate_{method}"] = None
      row[f"error_{method}"] = str(e).split(":")[0] if "overlap" in str(e) else str(e)
  return row


def per_image_source(path: str) -> tuple[str, str | None]:
  """The per-image file behind a curve file, and the codec its rows must have.

  ``X.json`` -> (``X.per_image.json``, None); ``X.CODEC.json`` (a per-codec file
  of classical.py) -> (``X.per_image.json``, CODEC) when only that one exists.
  """
  candidates = [(rd.per_image_path(path), None)]
  head, dot, codec = (path[:-5] if path.endswith(".json") else path).rpartition(".")
  if dot and os.sep not in codec:
    candidates.append((rd.per_image_path(head), codec))
  for candidate, codec_filter in candidates:
    if os.path.isfile(candidate):
      return candidate, codec_filter
  raise ValueError(f"No per-image file beside {path} (looked for "
                   f"{' and '.join(c for c, _ in candidates)}).")


def load_per_image(path: str) -> dict[str, tuple[list[float], list[float]]]:
  """{photo: (bpp list, PSNR-RGB list)} from the per-image file behind ``path``.

  Rows with an error or a non-finite bpp/PSNR (a lossless point) are left out.
  """
  source, codec = per_image_source(path)
  with open(source) as f:
    doc = json.load(f)
  if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
    raise ValueError(f"{source} is not a per-image file (no 'images' list).")
  points: dict[str, list[tuple[float, float]]] = {}
  for r in doc["images"]:
    if codec is not None and r.get("codec") != codec:
      continue
    b, p = r.get("bpp"), r.get("psnr-rgb")
    if "error" in r or b is None or p is None or not (math.isfinite(b) and math.isfinite(p)):
      continue
    points.setdefault(r["image"], []).append((b, p))
  if not points:
    raise ValueError(f"{source} has no usable rows" + (f" of codec {codec!r}." if codec
                                                         else "."))
  return {k: ([b for b, _ in sorted(v)], [p for _, p in sorted(v)])
          for k, v in sorted(points.items())}


def per_image_row(name: str, anchor: dict, curve: dict) -> dict:
  """BD-rate (PCHIP, %) of ``curve`` vs ``anchor`` per photo, and its spread.

  ``anchor``/``curve``: load_per_image outputs. A photo missing from either side
  or without PSNR overlap gets None and the reason.
  """
  photos, errors = {}, {}
  for photo in sorted(set(anchor) | set(curve)):
    if photo not in anchor or photo not in curve:
      photos[photo] = None
      errors[photo] = "missing from the " + ("anchor" if photo not in anchor else "curve")
      continue
    try:
      photos[photo] = bdrate.bd_rate(*anchor[photo], *curve[photo], "pchip")
    except ValueError as e:
      photos[photo] = None
      errors[photo] = str(e)
  values = [v for v in photos.values() if v is not None]
  summary = ({"mean": float(np.mean(values)), "median": float(np.median(values)),
              "min": min(values), "max": max(values),
              "wins": sum(v < 0 for v in values)} if values else {})
  return {"name": name, "per_image": photos, "errors": errors, "photos": len(values),
          **summary}


def per_image_markdown(rows: list[dict], anchor_name: str) -> str:
  """One row per curve, one column per photo, then the spread over photos."""
  photos = sorted({p for row in rows for p in row["per_image"]})
  lines = ["", f"BD-rate (PCHIP) against **{anchor_name}** photo by photo (each photo's "
           "own curves; negative = fewer bits at equal PSNR-RGB):", "",
           "| curve | " + " | ".join(photos) + " | mean | median | wins |",
           "|---|" + "---:|" * (len(photos) + 3)]
  for row in rows:
    cells = [f"{row['per_image'][p]:+.1f}%" if row["per_image"].get(p) is not None
             else "n/a" for p in photos]
    tail = ([f"{row['mean']:+.1f}%", f"{row['median']:+.1f}%",
             f"{row['wins']}/{row['photos']}"] if row["photos"] else ["n/a"] * 3)
    lines.append(f"| {row['name']} | " + " | ".join(cells + tail) + " |")
  notes = [f"{row['name']}, {p}: {e}" for row in rows for p, e in row["errors"].items()]
  if notes:
    lines += ["", "Notes:"] + [f"- {n}" for n in notes]
  return "\n".join(lines) + "\n"


def markdown(rows: list[dict], anchor: dict, dataset: str) -> str:
  """The table, with notes on n/a entries and on data-set mismatches."""
  lines = [f"BD-rate against **{anchor['name']}** ({os.path.relpath(anchor['file'], REPO)}), "
           "over the PSNR range where each curve overlaps the anchor; negative = fewer "
           "bits at equal PSNR-RGB.", "",
           "| curve | kind | points | bpp | PSNR (dB) | overlap (dB) | BD-rate PCHIP | "
           "BD-rate cubic |",
           "|---|---|---:|---|---|---|---:|---:|"]
  notes = []
  # An anchor given as a file may come from another image set than --dataset.
  anchor_ds = anchor.get("meta", {}).get("dataset") or dataset
  fmt_range = lambda r, f: f"{r[0]:{f}}–{r[1]:{f}}" if r else "–"
  for row in rows:
    cells = []
    for method in ("pchip", "cubic"):
      value = row[f"bd_rate_{method}"]
      if value is None:
        notes.append(f"{row['name']} ({method}): {row[f'error_{method}']}")
        cells.append("n/a")
      else:
        cells.append(f"{value:+.1f}%")
    lines.append(f"| {row['name']} | {row['kind']} | {row['points']} | "
                 f"{fmt_range(row['bpp_range'], '.3f')} | {fmt_range(row['psnr_range'], '.2f')} | "
                 f"{fmt_range(row['overlap_db'], '.2f')} | {cells[0]} | {cells[1]} |")
    ds = row.get("dataset")
    if row["kind"] == "ours" and ds != anchor_ds:
      notes.append(f"{row['name']} was measured on {ds or 'an unnamed image set'}, the "
                   f"anchor on {anchor_ds}: its BD-rate compares different images.")
  if notes:
    lines += ["", "Notes:"] + [f"- {n}" for n in dict.fromkeys(notes)]
  return "\n".join(lines) + "\n"


def plot(path: str, ours: list[dict], references: list[dict], anchor: dict,
         dataset: str) -> None:
  """bpp vs PSNR-RGB: our curves solid, published ones dashed, the anchor black."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
  for c in references:
    if c is anchor:
      continue
    ax.plot(c["bpp"], c["psnr"], "--", marker=".", lw=1, alpha=0.7, label=c["name"])
  ax.plot(anchor["bpp"], anchor["psnr"], "k--", marker="x", lw=1.5,
          label=f"{anchor['name']} (anchor)")
  for c in ours:
    ax.plot(c["bpp"], c["psnr"], "-", marker="o", lw=2, label=c["name"])
  # Zoom on our curves' rates when we have any: the published curves reach
  # 4 bpp and would squeeze ours into a corner.
  shown = ours or references or [anchor]
  xmax = max(max(c["bpp"]) for c in shown if c["bpp"]) * 1.15
  visible = [p for c in (*ours, *references) for b, p in zip(c["bpp"], c["psnr"], strict=True)
             if b <= xmax]
  ax.set_xlim(0, xmax)
  if visible:
    ax.set_ylim(min(visible) - 0.5, max(visible) + 0.5)
  ax.set_xlabel("bits per pixel")
  ax.set_ylabel("PSNR-RGB (dB)")
  ax.set_title(f"Rate-distortion ({dataset} references)")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def build_parser():
  p = common.parser("rd_table", __doc__)
  p.add_argument("results", nargs="*", help="CompressAI-schema results files")
  common.add(p, "--dataset", default="kodak")
  common.add(p, "--anchor", default="vtm")
  common.add(p, "--references", nargs="+", default=["default"])
  common.add(p, "--per-image", action="store_true",
             detail="needs the per-image files beside the results and an anchor given "
                    "as a results file")
  common.add_output(p, "rd_table")
  return p


def main(argv=None) -> int:
  args = common.parse(build_parser(), argv)

  try:
    anchor = load_curves(reference_path(args.dataset, args.anchor))[0]
    if args.references == ["none"]:
      ref_names = []
    elif args.references == ["all"]:
      ref_names = sorted(os.path.basename(p)[:-5] for p in
                         glob.glob(os.path.join(CURVES_DIR, args.dataset, "*.json")))
    elif args.references == ["default"]:
      ref_names = DEFAULT_REFERENCES.get(args.dataset) or sorted(
          os.path.basename(p)[:-5] for p in
          glob.glob(os.path.join(CURVES_DIR, args.dataset, "*.json")))
    else:
      ref_names = args.references
    anchor_file = os.path.abspath(anchor["file"])
    references = [c for n in ref_names for c in load_curves(reference_path(args.dataset, n))
                  if os.path.abspath(c["file"]) != anchor_file]
    ours = [c for path in args.results for c in load_curves(path)]
    per_image = []
    if args.per_image:
      if not os.path.isfile(args.anchor):
        raise ValueError("--per-image needs --anchor to be a results file (a published "
                         f"curve has no per-image points): {args.anchor!r}.")
      anchor_photos = load_per_image(args.anchor)
      for path in args.results:
        if len(load_curves(path)) != 1:
          raise ValueError(f"--per-image needs one curve per results file; {path} has "
                           "several (use its per-codec files).")
      per_image = [per_image_row(c["name"], anchor_photos, load_per_image(c["file"]))
                   for c in ours]
  except (ValueError, OSError) as e:
    print(f"rd_table: error: {e}", file=sys.stderr)
    return 1

  rows = ([bd_row(anchor, c, "ours") for c in ours] +
          [bd_row(anchor, c, "published") for c in references])
  table = markdown(rows, anchor, args.dataset)
  if per_image:
    table += per_image_markdown(per_image, anchor["name"])
  stem = common.output_path(args, "")
  with open(stem + ".md", "w") as f:
    f.write(table)
  # BD-rates are pure arithmetic on the files: no accelerator to name.
  common.write_json(stem + ".json", {
      "dataset": args.dataset, "anchor": {"name": anchor["name"], "file": anchor["file"]},
      "rows": rows, **({"per_image": per_image} if per_image else {})}, args, "CPU")
  plot(stem + ".png", ours, references, anchor, args.dataset)
  print(table)
  print(f"wrote {stem}.md, {stem}.png and {stem}.json")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
