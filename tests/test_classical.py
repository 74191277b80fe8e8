"""Classical baselines: real encoded bytes, independently recomputed PSNR."""

import io
import json

import numpy as np
import pytest
from PIL import Image, features
from skimage import data as skdata

from m2t_jax.evaluation import classical, rd
from conftest import load_experiment


def _pillow(image, **kwargs):
  """Encoding straight through Pillow, with the settings spelled out here."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, **kwargs)
  return buffer.getvalue()


DIRECT = {
    "jpeg": lambda im, q: _pillow(im, format="JPEG", quality=q, subsampling="4:2:0",
                                  optimize=True),
    "webp": lambda im, q: _pillow(im, format="WEBP", quality=q, method=6),
    "avif": lambda im, q: _pillow(im, format="AVIF", quality=q, subsampling="4:4:4", speed=6),
}
CODECS = [c for c in classical.CODECS if features.check({"jpeg": "jpg"}.get(c, c))]


@pytest.fixture(scope="module")
def photo():
  return skdata.chelsea()[:96, :128]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("quality", [20, 80])
def test_bytes_are_real_and_psnr_recomputed(photo, codec, quality):
  data, decoded = classical.encode_decode(photo, codec, quality)
  direct = DIRECT[codec](photo, quality)
  assert data == direct
  record = classical.evaluate_image(photo, codec, quality)
  assert record["bytes"] == len(direct)
  assert record["bpp"] == 8 * len(direct) / (96 * 128)
  # PSNR of the image Pillow decodes from the direct bytes, numpy formula.
  reference = np.asarray(Image.open(io.BytesIO(direct)).convert("RGB"), dtype=np.float64)
  np.testing.assert_array_equal(decoded, reference)
  mse = np.mean((photo.astype(np.float64) - reference) ** 2)
  assert record["psnr-rgb"] == pytest.approx(10 * np.log10(255.0**2 / mse), abs=1e-9)


def test_jpeg_is_420():
  # Chroma at half resolution: a 4:2:0 JPEG of a 16x16 image has 2x2-sampled luma.
  data = classical.encode(skdata.chelsea()[:16, :16], "jpeg", 90)
  with Image.open(io.BytesIO(data)) as img:
    assert img.layer[0][1:3] == (2, 2) and img.layer[1][1:3] == (1, 1)


def test_unavailable_or_bad_settings():
  with pytest.raises(ValueError, match="Unknown codec"):
    classical.encode(np.zeros((8, 8, 3), np.uint8), "jpegxl", 50)
  with pytest.raises(ValueError, match="quality"):
    classical.encode(np.zeros((8, 8, 3), np.uint8), "jpeg", 101)


def test_script_writes_compressai_files_and_survives_a_bad_image(tmp_path, photo):
  folder = tmp_path / "images"
  folder.mkdir()
  Image.fromarray(photo).save(folder / "a.png")
  Image.fromarray(skdata.astronaut()[:80, :112]).save(folder / "b.png")
  (folder / "c.png").write_bytes(b"garbage")
  script = load_experiment("classical")
  out = tmp_path / "out" / "classical.json"
  assert script.main(["--images", str(folder), "--output-dir", str(out.parent), "--codecs",
                      "jpeg", "webp", "--qualities", "30", "70", "--no-progress"]) == 0
  combined = json.loads(out.read_text())
  assert [d["name"] for d in combined] == ["JPEG (Pillow)", "WEBP (Pillow)"]
  jpeg = json.loads((tmp_path / "out" / "classical.jpeg.json").read_text())
  assert jpeg == combined[0]
  r = jpeg["results"]
  assert r["bpp"] == sorted(r["bpp"]) and r["num_images"] == [2, 2]
  per_image = json.loads((tmp_path / "out" / "classical.per_image.json").read_text())
  failed = [rec for rec in per_image["images"] if "error" in rec]
  assert [rec["image"] for rec in failed] == ["c.png"]
  # The point is the mean of the per-image values, each from real bytes.
  ok = [rec for rec in per_image["images"] if rec.get("codec") == "jpeg"
        and rec.get("quality") == 30]
  assert len(ok) == 2
  assert min(r["bpp"]) == pytest.approx(np.mean([rec["bpp"] for rec in ok]))
  images = {"a.png": photo, "b.png": skdata.astronaut()[:80, :112]}
  for rec in ok:
    h, w = images[rec["image"]].shape[:2]
    assert rec["bytes"] == len(DIRECT["jpeg"](images[rec["image"]], 30))
    assert rec["bpp"] == 8 * rec["bytes"] / (h * w)
  assert rd.per_image_path(str(out)).endswith("classical.per_image.json")
