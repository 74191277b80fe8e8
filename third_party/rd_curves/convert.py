"""Rebuilds the published RD curves in this folder from ``rd_published.json``.

    python third_party/rd_curves/convert.py --source PATH [--out DIR]

``--source`` is the collected table of published numbers (each curve with the
repository, commit and path it was taken from); it is not part of this
repository.
Every curve becomes ``DIR/<dataset>/<codec>.json`` in CompressAI's results
schema:

    {"name": ..., "description": ...,
     "meta": {"dataset", "source", "source_url", "license", "key", ...},
     "results": {"bpp": [...], "psnr-rgb": [...], ["ms-ssim-rgb": [...]]}}

with the points sorted by bpp. Values are copied unchanged (no rounding), so
a curve here equals the one in its source. ``index.json`` lists all files.
Curves or data sets not in the tables below get a name made from their key.
"""

import argparse
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))

# Data set key in rd_published.json -> folder name.
DATASETS = {
    "kodak": "kodak",
    "clic2020_professional_valid": "clic2020_professional_valid",
    "clic2020_professional(CompressAI, split unspecified)": "clic2020_professional_compressai",
    "clic2021_test": "clic2021_test",
    "tecnick": "tecnick",
}

# Curve key -> (file name without .json, display name). Keys are shared across
# data sets where the same codec appears.
CURVES = {
    "VTM (CompressAI; YCbCr444, QP 47..12 step 5; version likely 9.1 per "
    "examples/run-benchmarks.sh)": ("vtm", "VTM"),
    "VTM": ("vtm", "VTM"),
    "HM": ("hm", "HM"),
    "BPG444": ("bpg444", "BPG 4:4:4"),
    "AV1": ("av1", "AV1"),
    "ELIC (paper, 6pt)": ("elic-paper", "ELIC (paper)"),
    "minnen2020-cc10 (paper)": ("minnen2020-cc10-paper", "Minnen 2020 CC-10 (paper)"),
    "cheng2020-checkerboard-6M (paper)": ("cheng2020-checkerboard-6m-paper",
                                          "Cheng 2020 checkerboard 6M (paper)"),
    "minnen2018-checkerboard (paper)": ("minnen2018-checkerboard-paper",
                                        "Minnen 2018 checkerboard (paper)"),
    "mbt2018 (paper)": ("mbt2018-paper", "mbt2018 (paper)"),
    "mbt2018 (CompressAI pretrained, ans, cuda)": ("mbt2018-compressai", "mbt2018 (CompressAI)"),
    "mbt2018 (CompressAI)": ("mbt2018-compressai", "mbt2018 (CompressAI)"),
    "mbt2018-mean (CompressAI)": ("mbt2018-mean-compressai", "mbt2018-mean (CompressAI)"),
    "bmshj2018-hyperprior (CompressAI)": ("bmshj2018-hyperprior-compressai",
                                          "bmshj2018-hyperprior (CompressAI)"),
    "cheng2020-anchor (CompressAI)": ("cheng2020-anchor-compressai",
                                      "cheng2020-anchor (CompressAI)"),
    "cheng2020-attn (CompressAI)": ("cheng2020-attn-compressai", "cheng2020-attn (CompressAI)"),
    "ELIC (official 10pt, via authors)": ("elic-official", "ELIC (official, 10 points)"),
    "ELIC (official, via authors; ELIC paper mislabelled this as CLIC pro valid)": (
        "elic-official", "ELIC (official)"),
    "VTM (C3 baselines)": ("vtm-c3", "VTM (C3 baselines)"),
    "MLIC (C3 baselines)": ("mlic-c3", "MLIC"),
    "MLIC+ (C3 baselines)": ("mlicplus-c3", "MLIC+"),
    "STF (C3 baselines)": ("stf-c3", "STF"),
    "ELIC (C3 baselines)": ("elic-c3", "ELIC (C3 baselines)"),
    "CST (C3 baselines)": ("cst-c3", "Cheng 2020 (CST, C3 baselines)"),
    "WYH (C3 baselines)": ("wyh-c3", "Wang 2022 (WYH, C3 baselines)"),
    "kodak/PSNR_sRGB_RGB/minnen-2020-icip.txt (TFC)": ("minnen2020-icip-tfc",
                                                      "Minnen 2020 ICIP (TFC)"),
    "kodak/PSNR_sRGB_RGB/minnen-2018-neurips-opt-mse.txt (TFC)": (
        "minnen2018-neurips-tfc", "Minnen 2018 NeurIPS (TFC)"),
    "tecnick/PSNR_sRGB_RGB/minnen-2020-icip.txt (TFC)": ("minnen2020-icip-tfc",
                                                        "Minnen 2020 ICIP (TFC)"),
    "tecnick/PSNR_sRGB_RGB/bpg444.txt (TFC)": ("bpg444-tfc", "BPG 4:4:4 (TFC)"),
}

# Source repository -> licence of the repository the numbers were taken from.
LICENSES = {
    "InterDigitalInc/CompressAI": "BSD-3-Clause-Clear (CompressAI LICENSE)",
    "google-deepmind/c3_neural_compression": (
        "Apache-2.0 (software, incl. baselines/*.py); other materials CC-BY-4.0"),
    "tensorflow/compression": "Apache-2.0",
    "JiangWeibeta/ELIC": (
        "no licence file in the repository; numbers of the ELIC authors "
        "(He et al., CVPR 2022), cited as published results"),
}


def slugify(text: str) -> str:
  """A file-name-safe lowercase name ('MLIC+ (x)' -> 'mlicplus-x')."""
  text = text.lower().replace("+", "plus")
  return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "curve"


def parse_source(source: str) -> dict:
  """'owner/repo@commit:path[ extra]' -> {repo, commit, path, url}."""
  match = re.match(r"([\w.-]+/[\w.-]+)@([0-9a-f]+):([^\s;]+)", source)
  if not match:
    return {}
  repo, commit, path = match.groups()
  return {"repo": repo, "commit": commit, "path": path,
          "url": f"https://github.com/{repo}/blob/{commit}/{path}"}


def convert_curve(dataset: str, key: str, entry: dict) -> tuple[str, dict]:
  """One rd_published.json entry -> (file stem, CompressAI-schema dict)."""
  stem, label = CURVES.get(key, (slugify(key), key))
  points = sorted(zip(entry["bpp"], entry["psnr_rgb"], entry.get("msssim") or
                      [None] * len(entry["bpp"]), strict=True))
  results = {"bpp": [p[0] for p in points], "psnr-rgb": [p[1] for p in points]}
  if entry.get("msssim"):
    results["ms-ssim-rgb"] = [p[2] for p in points]
  src = parse_source(entry["source"])
  original = entry.get("meta") or {}
  meta = {
      "dataset": dataset,
      "source": entry["source"],
      "source_url": src.get("url"),
      "license": LICENSES.get(src.get("repo"), "see the source repository"),
      "key": key,
      "converted_by": "third_party/rd_curves/convert.py from rd_published.json",
  }
  if original:
    meta["original_meta"] = original
  description = original.get("description") or key
  if original.get("name") and original["name"] != label:
    description = f"{description} (source name: {original['name']})"
  return stem, {"name": label, "description": description, "meta": meta,
                "results": results}


def convert(source: str, out_dir: str) -> list[str]:
  """Writes every curve of ``source`` under ``out_dir``; returns the paths."""
  with open(source) as f:
    published = json.load(f)
  written, index = [], {}
  for dataset_key, curves in published.items():
    folder = DATASETS.get(dataset_key, slugify(dataset_key))
    os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    for key, entry in curves.items():
      stem, doc = convert_curve(dataset_key, key, entry)
      rel = f"{folder}/{stem}.json"
      if rel in index:
        raise ValueError(f"Two curves map to {rel}: {index[rel]!r} and {key!r}.")
      index[rel] = key
      path = os.path.join(out_dir, rel)
      with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
      written.append(path)
  with open(os.path.join(out_dir, "index.json"), "w") as f:
    json.dump(index, f, indent=1, sort_keys=True)
    f.write("\n")
  return written


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", required=True, help="rd_published.json")
  parser.add_argument("--out", default=HERE, help="output folder (default: this folder)")
  args = parser.parse_args(argv)
  paths = convert(args.source, args.out)
  print(f"wrote {len(paths)} curves under {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
