"""Classical codecs through Pillow (JPEG, WebP, AVIF), measured like ``m2t eval``.

    data, decoded = encode_decode(image, "jpeg", quality=75)  # uint8 (H, W, 3)

Settings (``SAVE_OPTIONS``):

* ``jpeg``: libjpeg(-turbo) baseline, 4:2:0 chroma subsampling,
  ``optimize=True`` (optimised Huffman tables), the standard quantisation
  tables scaled by ``quality``.
* ``webp``: lossy libwebp (always 4:2:0), ``method=6`` (slowest, smallest).
* ``avif``: Pillow's AVIF plugin (libavif; Pillow >= 11.3 built with it, see
  ``available_codecs``), 4:4:4 -- the published anchors (VTM, BPG 4:4:4) code
  full-resolution chroma, and PSNR is measured on RGB -- at ``speed=6``
  (libavif's default speed).

Bytes are the complete files Pillow writes (headers included); the decoded
image is what Pillow reads back, converted to RGB.
"""

import io
import sys
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image, features

from m2t_jax.evaluation import rd

CODECS = ("jpeg", "webp", "avif")
SAVE_OPTIONS = {
    "jpeg": {"format": "JPEG", "subsampling": "4:2:0", "optimize": True},
    "webp": {"format": "WEBP", "method": 6},
    "avif": {"format": "AVIF", "subsampling": "4:4:4", "speed": 6},
}
DEFAULT_QUALITIES = {
    "jpeg": (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95),
    "webp": (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95),
    "avif": (10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
}
_PIL_FEATURES = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}


def available_codecs() -> list[str]:
  """The codecs of ``CODECS`` that the installed Pillow can write."""
  return [c for c in CODECS if features.check(_PIL_FEATURES[c])]


def _check(codec: str, quality: int) -> None:
  if codec not in CODECS:
    raise ValueError(f"Unknown codec {codec!r}; choose from {CODECS}.")
  if codec not in available_codecs():
    raise ValueError(f"This Pillow ({Image.__version__}) cannot write {codec}.")
  if not (isinstance(quality, (int, np.integer)) and 0 <= quality <= 100):
    raise ValueError(f"quality must be an integer in 0..100, got {quality!r}.")


def encode(image: np.ndarray, codec: str, quality: int) -> bytes:
  """uint8 (H, W, 3) -> the bytes of a JPEG / WebP / AVIF file."""
  _check(codec, quality)
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"Expected uint8 (H, W, 3), got {image.dtype} {image.shape}.")
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, quality=int(quality), **SAVE_OPTIONS[codec])
  return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
  """Bytes of an image file -> uint8 (H, W, 3)."""
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def encode_decode(image: np.ndarray, codec: str, quality: int) -> tuple[bytes, np.ndarray]:
  """(the encoded bytes, the decoded uint8 (H, W, 3) image)."""
  data = encode(image, codec, quality)
  return data, decode(data)


def evaluate_image(image: np.ndarray, codec: str, quality: int) -> dict:
  """One image at one setting: bytes, bpp, PSNR-RGB, MS-SSIM, seconds."""
  h, w = image.shape[:2]
  t0 = time.perf_counter()
  data = encode(image, codec, quality)
  t1 = time.perf_counter()
  decoded = decode(data)
  t2 = time.perf_counter()
  record = {"codec": codec, "quality": int(quality), "height": h, "width": w,
            "bytes": len(data), "bpp": 8 * len(data) / (h * w)}
  record.update(rd.image_metrics(image, decoded))
  record.update({"encoding_time": t1 - t0, "decoding_time": t2 - t1})
  return record


def run(items: Sequence[rd.ImageItem], codecs: Sequence[str] | None = None,
        qualities: dict | None = None, progress: bool = True) -> tuple[dict, list[dict]]:
  """Every codec at every quality on every image.

  Args:
    items: the images (``rd.folder_images``).
    codecs: which codecs (default: all that Pillow supports).
    qualities: {codec: qualities} (default ``DEFAULT_QUALITIES``).
    progress: progress bar / lines on stderr.

  Returns:
    ({codec: CompressAI results document, one point per quality}, per-image
    records; failures carry 'error' and are reported on stderr).
  """
  codecs = list(codecs or available_codecs())
  for codec in codecs:
    _check(codec, 0)
  qualities = {c: tuple((qualities or {}).get(c, DEFAULT_QUALITIES[c])) for c in codecs}
  images, records = [], []
  for item in items:  # read once; a bad file fails here, once, for all settings
    try:
      images.append((item.name, item.load()))
    except Exception as e:  # noqa: BLE001 - reported, the run goes on
      error = f"{type(e).__name__}: {e}"
      print(f"m2t: warning: {item.name} failed: {error}", file=sys.stderr, flush=True)
      records.append({"image": item.name, "error": error})
  total = len(images) * sum(len(q) for q in qualities.values())
  bar = rd.Progress(total, "classical", progress)
  docs = {}
  try:
    for codec in codecs:
      points = []
      for quality in qualities[codec]:
        per_setting = []
        for name, image in images:
          record = {"image": name}
          try:
            record.update(evaluate_image(image, codec, quality))
            line = (f"{codec} q{quality} {name}: {record['bpp']:.3f} bpp, "
                    f"{record['psnr-rgb']:.2f} dB")
          except Exception as e:  # noqa: BLE001
            record.update({"codec": codec, "quality": quality,
                           "error": f"{type(e).__name__}: {e}"})
            line = f"{codec} q{quality} {name}: FAILED"
            bar.write(f"m2t: warning: {name} ({codec} q{quality}) failed: {record['error']}")
          per_setting.append(record)
          bar.update(line)
        records.extend(per_setting)
        point = rd.summarize(per_setting)
        point["quality"] = quality
        points.append(point)
      docs[codec] = rd.compressai_results(
          f"{codec.upper()} (Pillow)",
          f"{codec.upper()} through Pillow {Image.__version__} "
          f"({features.version(_PIL_FEATURES[codec])}), settings {SAVE_OPTIONS[codec]}",
          points,
          {"codec": codec, "pillow_version": Image.__version__,
           "library_version": features.version(_PIL_FEATURES[codec]),
           "settings": {k: v for k, v in SAVE_OPTIONS[codec].items() if k != "format"},
           "bpp": "8 * file bytes / (H * W)",
           "psnr-rgb": "per image on the decoded 8-bit RGB image; averaged over images",
           "ms-ssim-rgb": rd.MS_SSIM_NOTE},
          extra_keys=("quality", "num_images", "num_failed"))
  finally:
    bar.close()
  return docs, records
