"""experiments.rd_table: BD-rates of results files, and the per-photo spread."""

import json

import pytest

from experiments import rd_table

BPP = [0.1, 0.2, 0.4, 0.8]
PSNR = [28.0, 30.5, 33.2, 36.0]


def _write(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f)


def _curve(name, points):
  """A CompressAI-schema results file of the mean curve of ``points``."""
  by_setting = {}
  for _, setting, b, p in points:
    by_setting.setdefault(setting, []).append((b, p))
  settings = sorted(by_setting)
  mean = lambda i, s: sum(v[i] for v in by_setting[s]) / len(by_setting[s])
  return {"name": name, "meta": {"dataset": "folder:test"},
          "results": {"bpp": [mean(0, s) for s in settings],
                      "psnr-rgb": [mean(1, s) for s in settings]}}


@pytest.fixture()
def files(tmp_path):
  """An anchor written like classical.py (X.webp.json + X.per_image.json with two
  codecs) and ours written like m2t eval (Y.json + Y.per_image.json): photo a at
  0.8x the anchor's rates, photo b at 1.1x, photo c only in the anchor."""
  anchor_rows, other_rows, our_rows = [], [], []
  for photo, factor in (("a.png", 0.8), ("b.png", 1.1), ("c.png", None)):
    offset = {"a.png": 0.0, "b.png": -2.0, "c.png": 1.0}[photo]
    for q, (b, p) in enumerate(zip(BPP, PSNR, strict=True)):
      anchor_rows.append((photo, q, b * (1 + 0.1 * offset), p + offset))
      # A second codec in the same per-image file: must be filtered out.
      other_rows.append((photo, q, b * 5, p + offset))
      if factor is not None:
        our_rows.append((photo, q, b * (1 + 0.1 * offset) * factor, p + offset))
  _write(tmp_path / "anchor.webp.json", _curve("WebP", anchor_rows))
  _write(tmp_path / "anchor.per_image.json", {"images": [
      *({"image": i, "codec": "webp", "quality": q, "bpp": b, "psnr-rgb": p}
        for i, q, b, p in anchor_rows),
      *({"image": i, "codec": "jpeg", "quality": q, "bpp": b, "psnr-rgb": p}
        for i, q, b, p in other_rows)]})
  _write(tmp_path / "ours.json", _curve("ours", our_rows))
  _write(tmp_path / "ours.per_image.json", {"images": [
      {"image": i, "checkpoint": f"m{q}", "bpp": b, "psnr-rgb": p}
      for i, q, b, p in our_rows]})
  return tmp_path


def test_per_image_bd_rates_and_spread(files):
  assert rd_table.main([str(files / "ours.json"), "--anchor", str(files / "anchor.webp.json"),
                        "--references", "none", "--per-image", "--output-dir", str(files),
                        "--output-name", "table"]) == 0
  doc = json.loads((files / "table.json").read_text())
  (row,) = doc["per_image"]
  assert row["per_image"]["a.png"] == pytest.approx(-20.0, abs=0.1)
  assert row["per_image"]["b.png"] == pytest.approx(10.0, abs=0.1)
  assert row["per_image"]["c.png"] is None
  assert "missing from the curve" in row["errors"]["c.png"]
  assert row["photos"] == 2 and row["wins"] == 1
  assert row["mean"] == pytest.approx(-5.0, abs=0.1)
  assert row["min"] == pytest.approx(-20.0, abs=0.1)
  assert row["max"] == pytest.approx(10.0, abs=0.1)
  markdown = (files / "table.md").read_text()
  assert "| ours | -20.0% | +10.0% | n/a | -5.0% | -5.0% | 1/2 |" in markdown


def test_per_image_needs_a_results_file_as_anchor(files, capsys):
  assert rd_table.main([str(files / "ours.json"), "--references", "none", "--per-image",
                        "--output-dir", str(files), "--output-name", "t"]) == 1
  assert "needs --anchor to be a results file" in capsys.readouterr().err


def test_per_image_without_per_image_file_is_a_clear_error(files, capsys):
  (files / "ours.per_image.json").unlink()
  assert rd_table.main([str(files / "ours.json"), "--anchor", str(files / "anchor.webp.json"),
                        "--references", "none", "--per-image",
                        "--output-dir", str(files), "--output-name", "t"]) == 1
  assert "No per-image file beside" in capsys.readouterr().err


def test_mean_curve_bd_rate_without_per_image(tmp_path):
  """Without --per-image: one row per curve (0.9x the anchor's rates: -10%), no
  per-photo section."""
  _write(tmp_path / "anchor.json", {"name": "anchor", "results": {"bpp": BPP,
                                                                 "psnr-rgb": PSNR}})
  _write(tmp_path / "ours.json", {"name": "ours", "results": {
      "bpp": [b * 0.9 for b in BPP], "psnr-rgb": PSNR}})
  assert rd_table.main([str(tmp_path / "ours.json"), "--anchor",
                        str(tmp_path / "anchor.json"), "--references", "none",
                        "--output-dir", str(tmp_path), "--output-name", "t"]) == 0
  doc = json.loads((tmp_path / "t.json").read_text())
  assert "per_image" not in doc
  (row,) = doc["rows"]
  assert row["kind"] == "ours"
  assert row["bd_rate_pchip"] == pytest.approx(-10.0, abs=0.1)
  assert row["bd_rate_cubic"] == pytest.approx(-10.0, abs=0.1)
