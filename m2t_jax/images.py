"""Reading and writing image files for the CLI (Pillow).

Colour handling on read (documented in README.md):
* RGB: as is.
* greyscale (L, 1), palette (P), CMYK, YCbCr, LAB, HSV: converted to RGB.
* with alpha (RGBA, LA, PA, P with transparency): the alpha channel is dropped
  (colour values kept as stored); a note says so.
* 16-bit and 32-bit greyscale (I;16, I, F): scaled to 8 bits, then replicated.
Anything Pillow cannot read raises ``ImageFileError`` with the reason.
"""

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageFileError(ValueError):
  """An image file that cannot be read as an RGB picture."""


def read_rgb(path: str) -> tuple[np.ndarray, list[str]]:
  """-> (uint8 (H, W, 3), notes about conversions made)."""
  notes = []
  try:
    with Image.open(path) as img:
      img.load()
      mode = img.mode
      has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
          mode == "P" and "transparency" in img.info)
      if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        notes.append(f"{mode} image scaled to 8 bits and converted to RGB")
        return np.repeat(grey[..., None], 3, axis=2), notes
      if has_alpha:
        notes.append(f"alpha channel of the {mode} image dropped")
      elif mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
      rgb = img.convert("RGBA").convert("RGB") if has_alpha else img.convert("RGB")
      return np.asarray(rgb, dtype=np.uint8).copy(), notes
  except FileNotFoundError:
    raise
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise ImageFileError(f"cannot read {path!r} as an image: {e}") from e


def write_png(path: str, image: np.ndarray) -> None:
  Image.fromarray(image).save(path)
