"""Regenerates the long tables of the docs from the committed result files.

A generated table sits in a markdown page between two markers::

  <!-- table:NAME -->
  | ... the table ... |
  <!-- /table -->

and this script rewrites what lies between them with ``TABLES[NAME]()``, read
from ``experiments/results/`` and ``m2t_jax/models/manifest.json``, so a figure in
the docs is the figure in its file. Run from the repository root::

  python docs/results/make_tables.py          # rewrite every page in place
  python docs/results/make_tables.py --check  # exit 1 if a page is stale

(``python -m docs.results.make_tables`` works too.)
"""

import argparse
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"
PAGES = ("README.md", "docs/**/*.md")
MARKER = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def _load(name: str) -> dict:
  return json.loads((RESULTS / name).read_text())


def _table(header, rows) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if h.startswith(">") else "---" for h in header) + "|"]
  lines[0] = lines[0].replace("| >", "| ")
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
  return f"{x:+.2f}%"


# Entropy-model benchmark (same latents) ---------------------------------------

def _entry(row) -> str:
  """The benchmark's name of one row: the model spec, MT with its S, nested with its schedule."""
  if row["model"] == "mt":
    return f"mt S={row['S']}"
  if row["variant"]:
    return f"{row['model']} [{row['variant']}]"
  return row["model"]


def _final_rows(data, step=None):
  step = step or max(r["step"] for r in data["rows"])
  rows = [r for r in data["rows"] if r["step"] == step]
  return sorted(rows, key=lambda r: r["bpp"])


def _vs_mt(row, rows) -> str:
  mt = {r["S"]: r["bpp"] for r in rows if r["model"] == "mt"}
  if row["S"] not in mt:
    return ""
  return _pct(100 * (row["bpp"] / mt[row["S"]] - 1))


def _benchmark(name: str, times: bool) -> str:
  rows = _final_rows(_load(name))
  header = ["model", ">S", ">bpp (mean)", "min..max", ">Δ vs MT same S"]
  header += [">transformer s", ">full decode s"] if times else []
  header += [">decode GFLOPs", ">entropy params"]
  out = []
  for r in rows:
    cells = [_entry(r), r["S"], f"{r['bpp']:.4f}", f"{r['bpp_min']:.3f}..{r['bpp_max']:.3f}",
             _vs_mt(r, rows)]
    if times:
      cells += [f"{r['transformer_s']:.3f}", f"{r['full_decode_s']:.3f}"]
    cells += [f"{r['decode_flops'] / 1e9:.2f}", f"{r['entropy_params']:,}"]
    out.append(cells)
  return _table(header, out)


def benchmark_1800() -> str:
  return _benchmark("entropy_benchmark_small_1800.json", times=False)


def benchmark_900() -> str:
  return _benchmark("entropy_benchmark_small_900.json", times=True)


def table1_small() -> str:
  """MT coded at S against M2T trained at S, both budgets."""
  runs = [_final_rows(_load(f)) for f in ("entropy_benchmark_small_900.json",
                                          "entropy_benchmark_small_1800.json")]
  out = []
  for s in (4, 8, 12):
    mt = [next(r for r in rows if r["model"] == "mt" and r["S"] == s) for rows in runs]
    m2t = [next(r for r in rows if r["model"] == f"m2t:S={s}") for rows in runs]
    out.append([s, " / ".join(f"{r['bpp']:.4f}" for r in mt),
                " / ".join(f"{r['bpp']:.4f}" for r in m2t),
                " / ".join(_pct(100 * (b["bpp"] / a["bpp"] - 1))
                           for a, b in zip(mt, m2t, strict=True))])
  return _table([">S", ">MT bpp, 900 / 1800 steps", ">M2T bpp (trained at S), 900 / 1800",
                 ">M2T vs MT, 900 / 1800"], out)


def _per_photo(a, b) -> list[float]:
  return [100 * (y / x - 1) for x, y in zip(a, b, strict=True)]


def _at(data, model, step, S=None, variant=None):
  for r in data["rows"]:
    if (r["model"] == model and r["step"] == step and (S is None or r["S"] == S)
        and r["variant"] == variant):
      return r
  raise KeyError(f"no row {model} S={S} [{variant}] at step {step}")


def seeds_m2t() -> str:
  base = _load("entropy_benchmark_small_1800.json")
  out = []
  for s in (4, 8, 12):
    seed1 = _load(f"entropy_benchmark_seeds/seeds_m2t_S_{s}_seed_1.json")
    a = _at(base, f"m2t:S={s}", 1800)
    b = _at(seed1, f"m2t:S={s}:seed=1", 1800)
    out.append([f"m2t:S={s}", f"{a['bpp']:.4f}", f"{b['bpp']:.4f}",
                ", ".join(f"{d:+.2f}" for d in _per_photo(a["bpp_per_photo"],
                                                          b["bpp_per_photo"])) + "%"])
  return _table(["model", ">seed 0", ">seed 1", "seed 1 vs 0, per photo (035-040)"], out)


def seeds_nested() -> str:
  files = {0: _load("entropy_benchmark_small_1800.json"),
           1: {"rows": _load("entropy_benchmark_seeds/seeds_nested_seed_1.json")["rows"]
               + _load("entropy_benchmark_seeds/seeds_mt_seed_1.json")["rows"]}}
  names = {0: ("nested", "mt"), 1: ("nested:seed=1", "mt:seed=1")}
  out = []
  for step in (600, 1200, 1800):
    for seed in (0, 1):
      nested, mt = names[seed]
      full = _at(files[seed], nested, step, variant="full")
      fast = _at(files[seed], nested, step, variant="fast")
      mt8 = _at(files[seed], mt, step, S=8)
      d = _per_photo(mt8["bpp_per_photo"], full["bpp_per_photo"])
      won = sum(x < 0 for x in d)
      out.append([step, seed, f"{full['bpp']:.4f}", f"{fast['bpp']:.4f}", f"{mt8['bpp']:.4f}",
                  f"{_pct(100 * (full['bpp'] / mt8['bpp'] - 1))} ("
                  + ", ".join(f"{x:+.1f}" for x in d) + ")", f"{won}/{len(d)}"])
  return _table([">step", ">seed", ">nested [full]", ">nested [fast]", ">mt S=8",
                 "[full] vs mt S=8, per photo", ">photos won"], out)


def _wins(a, b) -> str:
  d = _per_photo(a["bpp_per_photo"], b["bpp_per_photo"])
  return f"{_pct(100 * (b['bpp'] / a['bpp'] - 1))} ({sum(x < 0 for x in d)}/{len(d)})"


def seeds_grouped() -> str:
  base = _load("entropy_benchmark_small_1800.json")
  seed1 = _load("entropy_benchmark_seeds/seeds_grouped_seed_1.json")
  out = []
  for step in (600, 1200, 1800):
    a, b = _at(base, "grouped", step), _at(seed1, "grouped:seed=1", step)
    out.append([step, f"{a['bpp']:.4f}", f"{b['bpp']:.4f}", _wins(a, b)])
  return _table([">step", ">seed 0", ">seed 1", "seed 1 vs 0 (photos lower)"], out)


def grouped_wide() -> str:
  base = _load("entropy_benchmark_small_1800.json")
  seed1 = _load("entropy_benchmark_seeds/seeds_grouped_seed_1.json")
  wide = _load("entropy_benchmark_grouped_wide.json")
  spec = "grouped:transformer.d_model=256:transformer.mlp_dim=1024"
  out = []
  for step in (600, 1200, 1800):
    w = _at(wide, spec, step)
    a, b = _at(base, "grouped", step), _at(seed1, "grouped:seed=1", step)
    out.append([step, f"{w['bpp']:.4f}", f"{a['bpp']:.4f} / {b['bpp']:.4f}",
                f"{_wins(a, w)} / {_wins(b, w)}"])
  return _table([">step", ">wide", ">grouped seed 0 / seed 1",
                 "wide vs seed 0 / seed 1 (photos won)"], out)


# The paper's figures at small scale ------------------------------------------

def fig4_benchmark() -> str:
  rows = _final_rows(_load("entropy_benchmark_small_900.json"))
  order = ["mt S=4", "mt S=8", "mt S=12", "m2t:S=4", "m2t:S=8", "m2t:S=12", "grouped",
           "nested [full]", "nested [fast]", "m2t:S=8:transformer.num_layers=2"]
  by = {_entry(r): r for r in rows}
  out = [[name.split(" S=")[0], by[name]["S"], f"{by[name]['transformer_s']:.3f}",
          f"{by[name]['full_decode_s']:.3f}", f"{by[name]['decode_flops'] / 1e9:.1f}"]
         for name in order]
  return _table(["model", ">S", ">transformer s", ">full decode s", ">decode GFLOPs"], out)


def _transformer_s(r) -> float:
  # The committed files predate one interface for every kind and keep the old names.
  return r.get("transformer_s", r.get("mt_transformer_s", r.get("m2t_transformer_s")))


def fig4_sweep() -> str:
  small = _load("fig4_small_shipped_768x512.json")["records"]
  paper = _load("fig4_paper_384x384_random.json")["records"]
  out = []
  for s in (2, 4, 8, 12):
    cells = [s]
    for recs in (small, paper):
      t = {r["model"]: _transformer_s(r) for r in recs if r["steps"] == s}
      cells.append(f"{t['mt']:.3f} / {t['m2t']:.3f}")
    out.append(cells)
  return _table([">S", "small, shipped, 768x512", "paper, 384x384"], out)


def fig5() -> str:
  recs = _load("schedule_ablation_benchmark_mt1800.json")["records"]
  alphas = sorted({r["alpha"] for r in recs})
  out = []
  for order in ("entropy", "qlds", "random"):
    for s in sorted({r["steps"] for r in recs}):
      bpp = {r["alpha"]: r["bpp"] for r in recs if r["order"] == order and r["steps"] == s}
      out.append([order, s] + [f"{bpp[a]:.4f}" for a in alphas])
  return _table(["order", ">S"] + [f">alpha={a}" for a in alphas], out)


# Size schedules ---------------------------------------------------------------

def size_schedules() -> str:
  data = _load("size_schedules_small_step500.json")
  by = {s["schedule"]: s for s in data["schedules"]}
  # Today's names (entropy/nested.py); the file's own "named" field predates the
  # rule that 'fast' is the exit before the last at every step.
  named = {"2,2,2,2,2,2,2,2": "full", "1,1,1,1,1,1,1,1": "fast", "0,0,0,0,0,0,0,0": "smallest"}
  picks = ["2,2,2,2,2,2,2,2", "2,2,2,2,2,2,2,1", "2,2,2,2,1,1,1,1", "1,1,1,1,1,1,1,1",
           "0,0,0,0,0,0,0,0"]
  out = []
  for p in picks:
    s = by[p]
    out.append([f"{named.get(p, '')} `{p}`".strip(), f"{s['bpp_est']:.4f}",
                _pct(s["bpp_vs_full_pct"]).replace("+0.00%", "0"),
                f"{s['predicted_transformer_s']:.3f} / {s['transformer_s']:.3f} s",
                f"{s['transformer_gflops']:.1f}"])
  return _table(["schedule (exit per step)", ">estimated bpp", ">vs full",
                 ">transformer time, predicted / measured", ">GFLOPs"], out)


def depth_baselines() -> str:
  rows = sorted(_load("depth_baselines_small.json")["rows"],
                key=lambda r: (-r["S"], -r["depth"]))
  rows = [r for r in rows if r["S"] == 8] + [r for r in rows if r["S"] == 4 and r["depth"] == 4]
  return _table([">blocks", ">S", ">est. bpp", ">vs full", ">transformer s"],
                [[r["depth"], r["S"], f"{r['bpp']:.4f}", f"{r['vs_full_pct']:+.0f}%",
                  f"{r['transformer_s']:.3f}"] for r in rows])


# Rate-distortion ----------------------------------------------------------------

def _points(name):
  res = _load(name)["results"]
  return (" / ".join(f"{b:.3f}" for b in res["bpp"]),
          " / ".join(f"{p:.2f}" for p in res["psnr-rgb"]))


def _range(name):
  res = _load(name)["results"]
  return (f"{min(res['bpp']):.3f}-{max(res['bpp']):.3f}",
          f"{min(res['psnr-rgb']):.2f}-{max(res['psnr-rgb']):.2f}")


def rd_validation() -> str:
  jpeg = {r["file"]: r["bd_rate_pchip"] for r in _load("rd_vs_jpeg.json")["rows"]}
  webp = {r["file"]: r["bd_rate_pchip"] for r in _load("rd_vs_webp.json")["rows"]}
  curves = [("GroupedMixer (default), refined 30 steps", "grouped_val_refined30.json", True),
            ("GroupedMixer (default), E's latent", "grouped_val.json", True),
            ("M2T, E's latent", "m2t_val.json", True),
            ("MT, E's latent (one lambda)", "mt_val.json", True),
            ("JPEG 4:2:0 optimised", "jpeg_low.jpeg.json", False),
            ("WebP method 6", "webp_val.webp.json", False),
            ("AVIF 4:4:4", "classical_val.avif.json", False)]
  out = []
  for label, name, ours in curves:
    bpp, psnr = _points(name) if ours else _range(name)
    key = f"experiments/results/{name}"
    cells = []
    for d, anchor in ((jpeg, "jpeg_low.jpeg.json"), (webp, "webp_val.webp.json")):
      value = d.get(key)
      cells.append("0" if name == anchor else
                   f"{value:+.1f}%" if value is not None else "one point")
    out.append([label, f"`{name}`", bpp, psnr] + cells)
  return _table(["curve", "file", "bpp", "PSNR-RGB (dB)", ">BD-rate vs JPEG",
                 ">BD-rate vs WebP"], out)


def _per_image(name) -> str:
  data = _load(name)
  photos = sorted(data["per_image"][0]["per_image"])
  out = []
  for r in data["per_image"]:
    if r.get("mean") is None:  # a single point (MT) has no curve to compare
      continue
    out.append([r["name"]] + [f"{r['per_image'][p]:+.1f}%" for p in photos]
               + [f"{r['mean']:+.1f}%", f"{r['median']:+.1f}%", f"{r['wins']}/{r['photos']}"])
  return _table(["curve"] + [">" + p.removesuffix(".png") for p in photos]
                + [">mean", ">median", ">wins"], out)


def rd_per_photo() -> str:
  return _per_image("rd_vs_webp.json")


def rd_outside() -> str:
  """Per photo, then the BD-rate of the mean curves over all five photos."""
  pooled = "\n".join(f"- {r['name']}: {r['bd_rate_pchip']:+.1f}% (all five photos as one curve)"
                     for r in _load("rd_outside_vs_webp.json")["rows"])
  return _per_image("rd_outside_vs_webp.json") + "\n" + pooled + "\n"


# Fuzzing ------------------------------------------------------------------------

def fuzz() -> str:
  data = _load("fuzz.json")
  outcomes = sorted(data["by_outcome"], key=lambda k: -data["by_outcome"][k])
  rows = [[m] + [data["by_mutation"][m].get(o, "") for o in outcomes]
          for m in sorted(data["by_mutation"])]
  rows.append(["**all**"] + [data["by_outcome"][o] for o in outcomes])
  return _table(["mutation"] + [">" + o.replace("BitstreamError:", "") for o in outcomes], rows)


# The model zoo (README) -----------------------------------------------------------

def zoo() -> str:
  manifest = json.loads((ROOT / "m2t_jax" / "models" / "manifest.json").read_text())
  evals = {}
  for name, field in (("grouped_val_refined30.json", "val_refined"),
                      ("grouped_val.json", "val"), ("m2t_val.json", "val"),
                      ("mt_val.json", "val"), ("grouped_outside_refined30.json", "out_refined"),
                      ("grouped_outside.json", "out")):
    res = _load(name)["results"]
    for i, ckpt in enumerate(res["checkpoint"]):
      folder = ckpt.rsplit("/", 1)[-1]
      evals.setdefault(folder, {})[field] = (res["bpp"][i], res["psnr-rgb"][i],
                                             res["decoding_time"][i])
  point = lambda e, k: f"{e[k][0]:.3f} / {e[k][1]:.2f}" if k in e else "not measured"
  out = []
  for name, m in sorted(manifest["models"].items(),
                        key=lambda kv: (kv[1]["kind"] != "grouped", kv[1]["kind"], kv[1]["lmbda"])):
    e = evals[m["folder"]]
    label = f"`{name}`" + (" (default)" if name == manifest["default"] else "")
    out.append([label, m["kind"], m["lmbda"], point(e, "val"), point(e, "val_refined"),
                point(e, "out"), point(e, "out_refined"), f"{e['val'][2]:.1f}"])
  return _table(["shipped name", "kind", ">lambda", "validation bpp / dB, E's latent",
                 "validation, refined", "outside photos, E's latent", "outside, refined",
                 ">decode s/photo (validation)"], out)


TABLES = {f.__name__.replace("_", "-"): f for f in (
    benchmark_1800, benchmark_900, table1_small, seeds_m2t, seeds_nested, seeds_grouped,
    grouped_wide, fig4_benchmark, fig4_sweep, fig5, size_schedules, depth_baselines,
    rd_validation, rd_per_photo, rd_outside, fuzz, zoo)}


def pages() -> list[pathlib.Path]:
  return sorted({p for pattern in PAGES for p in ROOT.glob(pattern)})


def render(text: str) -> str:
  """``text`` with every marked table regenerated; KeyError for an unknown table name."""
  return MARKER.sub(lambda m: m.group(1) + TABLES[m.group(2)]() + m.group(4), text)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="change nothing; exit 1 if a page's tables differ from the files")
  args = parser.parse_args(argv)
  stale = []
  for page in pages():
    text = page.read_text()
    new = render(text)
    if new != text:
      stale.append(page.relative_to(ROOT))
      if not args.check:
        page.write_text(new)
  verb = "stale" if args.check else "rewritten"
  for page in stale:
    print(f"{verb}: {page}")
  return 1 if args.check and stale else 0


if __name__ == "__main__":
  sys.exit(main())
