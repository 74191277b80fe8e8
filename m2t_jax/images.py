"""The one reader of image files: CLI, evaluation, training data and demo.

Every image becomes an RGB uint8 array (H, W, 3), C-contiguous. What happens
on the way, the same for a file (``read_rgb``, ``load_image``), a PIL image or
an array (``to_rgb_uint8``, e.g. a TFDS example):

* EXIF orientation (files only): applied with ``ImageOps.exif_transpose``, so
  a camera JPEG tagged "rotate 90 CW" comes out upright, as viewers show it.
* 16-bit samples x (0..65535) become ``round(x * 255 / 65535)`` (= round(x /
  257)): 65535 -> 255, 32768 -> 128, and 257 * k -> k, so an 8-bit image
  stored as 16 bits (k * 257) reads back exactly. Not ``x >> 8`` (the top
  byte), which is up to one level darker. This holds for 16-bit greyscale
  (I;16), 16-bit colour PNGs (RGB, RGBA, LA: Pillow alone would keep only
  their top byte, see ``_PNG16_SECOND_PASS``) and uint16 arrays. Other 16-bit
  colour files (TIFF) reach us already reduced to 8 bits by Pillow (top byte).
  32-bit images (I, F) are taken as 16-bit samples: clipped to 0..65535, then
  scaled the same way.
* Greyscale (L, 1-bit, I;16, 2-D arrays): the grey value in all three channels.
* Palette (P): each index looked up in the palette.
* Alpha (RGBA, LA, PA, La, RGBa, P with a transparent index; (H, W, 2|4)
  arrays): the alpha channel is dropped and the colour kept as stored, *not*
  composited on a background, so a transparent region keeps its colour.
* Other modes (CMYK, YCbCr, LAB, HSV): Pillow's conversion to RGB.
* Several frames (animated GIF/PNG/WebP, multi-page TIFF, a camera's MPO JPEG; files
  only): the first frame, with a note.

``read_rgb`` also returns one note per change made (orientation, bit depth,
colour mode, alpha), for the CLI to print. A file that Pillow cannot decode
(empty, truncated, not an image) raises ``ImageFileError`` naming the path and
the reason; a missing file raises ``FileNotFoundError``.
"""

import os
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # what list_images finds (any case)

_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class ImageFileError(ValueError):
  """An image (file or array) that cannot be read as an RGB picture."""


# --------------------------------------------------------------------------- #
# Pixels -> RGB uint8.
# --------------------------------------------------------------------------- #


def scale_16_to_8(values: np.ndarray) -> np.ndarray:
  """uint16 samples -> uint8: round(x * 255 / 65535), exactly.

  x / 257 is never k + 1/2 for an integer x, so floor((x + 128) / 257) is the
  rounding, with no ties to break (uint32 so that x + 128 cannot wrap).
  """
  return ((np.asarray(values, np.uint32) + 128) // 257).astype(np.uint8)


def _array_to_rgb(array: np.ndarray, name: str, what: str) -> tuple[np.ndarray, list[str]]:
  """uint8/uint16 (H, W) or (H, W, 1|2|3|4) -> (RGB uint8 (H, W, 3), notes).

  ``what`` names the input in the notes ('LA image'), ``name`` in errors.
  """
  notes = []
  if array.dtype.kind == "u" and array.dtype.itemsize == 2:  # any byte order
    array = scale_16_to_8(array)
    notes.append(f"{what}: 16-bit values scaled to 8 bits (round(x * 255 / 65535))")
  if array.dtype != np.uint8:
    raise ImageFileError(f"{name}: expected uint8 or uint16 pixels, got {array.dtype}.")
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
    raise ImageFileError(f"{name}: expected an image (H, W) or (H, W, 1|2|3|4), got "
                         f"shape {array.shape}.")
  if array.shape[0] < 1 or array.shape[1] < 1:
    raise ImageFileError(f"{name}: empty image of shape {array.shape}.")
  channels = array.shape[-1]
  if channels in (2, 4):
    notes.append(f"{what}: alpha channel dropped (colours kept as stored, not "
                 "composited)")
  if channels <= 2:
    array = np.repeat(array[..., :1], 3, axis=-1)  # a new, contiguous array
    notes.append(f"{what}: greyscale replicated to RGB")
  elif channels == 4:
    array = array[..., :3]
  array = np.ascontiguousarray(array)
  if not array.flags.writeable:  # np.asarray(PIL image) is a read-only view
    array = array.copy()
  return array, notes


def _pil_to_rgb(image: Image.Image, name: str) -> tuple[np.ndarray, list[str]]:
  """A PIL image (any mode) -> (RGB uint8 (H, W, 3), notes); no EXIF handling."""
  mode = image.mode
  what = f"{mode} image"
  if mode in ("RGB", "L", "LA", "RGBA") or mode.startswith("I;16"):
    return _array_to_rgb(np.asarray(image), name, what)
  if mode in ("I", "F"):
    # 32-bit integer or float: no fixed range; taken as 16-bit samples (Pillow
    # opens some 16-bit files, e.g. PGM and old PNG readers, as I).
    values = np.nan_to_num(np.asarray(image, np.float64))
    array = np.clip(np.round(values), 0, 65535).astype(np.uint16)
    rgb, notes = _array_to_rgb(array, name, what)
    return rgb, [f"{what}: 32-bit values clipped to 0..65535 (taken as 16-bit)", *notes]
  try:
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
      # Palette lookup (P, PA) or un-premultiplying (La, RGBa) by Pillow; the
      # alpha channel is then dropped by _array_to_rgb.
      rgba, notes = _array_to_rgb(np.asarray(image.convert("RGBA")), name, what)
      return rgba, [f"{what} converted to RGB", *notes]
    rgb, notes = _array_to_rgb(np.asarray(image.convert("RGB")), name, what)
  except (ValueError, OSError) as e:  # e.g. "conversion from X to RGB not supported"
    raise ImageFileError(f"{name}: cannot convert a {mode} image to RGB: {e}") from e
  return rgb, [f"{what} converted to RGB", *notes]


def to_rgb_uint8(image, name: str = "image") -> np.ndarray:
  """A PIL image or an array -> (H, W, 3) uint8 RGB (rules: module docstring).

  Args:
    image: ``PIL.Image.Image`` of any mode, or an array (H, W), (H, W, 1),
      (H, W, 2) (grey + alpha), (H, W, 3) or (H, W, 4) (RGBA) of uint8 or
      uint16 (16-bit samples, scaled to 8 bits). EXIF orientation is not
      applied here: a PIL image is taken as it is (``read_rgb`` orients files).
    name: how the image is called in error messages (its path, for example).

  Returns:
    A C-contiguous, writeable (H, W, 3) uint8 array.

  Raises:
    ImageFileError: another dtype or shape, or an empty image.
  """
  if isinstance(image, Image.Image):
    return _pil_to_rgb(image, name)[0]
  array = np.asarray(image)
  return _array_to_rgb(array, name, f"{array.dtype} array {array.shape}")[0]


# --------------------------------------------------------------------------- #
# Files.
# --------------------------------------------------------------------------- #


# Pillow has no 16-bit colour mode: it decodes a 16-bit RGB, RGBA or LA PNG to
# 8 bits by keeping each sample's top byte (raw modes 'RGB;16B', 'RGBA;16B',
# 'LA;16B', the last one into an RGBA image). A second decoding of the same
# stream with another raw mode recovers the low bytes: the little-endian
# 'RGB;16L' / 'RGBA;16L' keep the other byte of each sample, and 'RGBA' reads
# an LA;16B pixel's 4 bytes (L top, L low, A top, A low) unchanged. PNG
# unfiltering depends only on the bytes per pixel, the same in both decodings.
_PNG16_SECOND_PASS = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}


def _png16_colour(opened: Image.Image, path: str) -> np.ndarray | None:
  """The 16-bit samples of a 16-bit RGB / RGBA / LA PNG, uint16 (H, W, 3|4|2),
  oriented by ``exif_transpose``; None for any other image. Must be called
  before anything loads ``opened`` (loading clears its tile list)."""
  tile = opened.tile
  if (opened.format != "PNG" or len(tile) != 1 or tile[0].codec_name != "zip"
      or tile[0].args not in _PNG16_SECOND_PASS):
    return None
  rawmode = tile[0].args
  with Image.open(path) as second:
    second.tile = [second.tile[0]._replace(args=_PNG16_SECOND_PASS[rawmode])]
    other = np.asarray(ImageOps.exif_transpose(second), np.uint16)
  if rawmode == "LA;16B":  # other = (L top, L low, A top, A low) per pixel
    return other[..., 0::2] << 8 | other[..., 1::2]
  return np.asarray(ImageOps.exif_transpose(opened), np.uint16) << 8 | other


def read_rgb(path: str, max_pixels: int | None = None) -> tuple[np.ndarray, list[str]]:
  """Decodes the image file at ``path`` (any format Pillow reads).

  Args:
    path: the file.
    max_pixels: if given, a file whose header claims more pixels (width x
      height) is refused before its pixels are decoded (a 100 KB PNG can claim
      10000 x 10000). Pillow's own limit, ``PIL.Image.MAX_IMAGE_PIXELS`` (twice it
      is refused outright), applies as well.

  Returns:
    (C-contiguous uint8 (H, W, 3) RGB, notes): one human-readable note per
    change made (EXIF orientation, bit depth, colour mode, alpha), empty for an
    upright 8-bit RGB file. The rules are in the module docstring.

  Raises:
    FileNotFoundError: no file at ``path``.
    ImageFileError: the file cannot be decoded, or claims more than
      ``max_pixels`` pixels; the message names the path.
  """
  try:
    with warnings.catch_warnings():
      if max_pixels is not None:  # our limit is checked below, in place of the warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      opened = Image.open(path)
    with opened:
      width, height = opened.size
      if max_pixels is not None and width * height > max_pixels:
        raise ImageFileError(
            f"{path!r} is {width} x {height} ({width * height} pixels), more than "
            f"the limit of {max_pixels} (m2t compress --max-pixels)")
      frames = getattr(opened, "n_frames", 1)
      wide = _png16_colour(opened, path)
      orientation = opened.getexif().get(ExifTags.Base.Orientation, 1)
      if wide is not None:
        kind = {2: "LA", 3: "RGB", 4: "RGBA"}[wide.shape[-1]]
        rgb, notes = _array_to_rgb(wide, path, f"16-bit {kind} PNG")
      else:
        # A transposed copy of the image (an upright copy when there is no tag).
        rgb, notes = _pil_to_rgb(ImageOps.exif_transpose(opened), path)
  except (FileNotFoundError, ImageFileError):
    raise
  except Exception as e:  # noqa: BLE001 - see below
    # Pillow's ways of saying "not an image" (UnidentifiedImageError), "broken
    # image" (OSError, SyntaxError, ValueError, NotImplementedError; but a
    # malformed EXIF or TIFF tag also raises struct.error or TypeError, a broken
    # AVIF RuntimeError) or "claims too many pixels" (DecompressionBombError:
    # refused before anything is allocated). No list of types is complete, and
    # the caller's one question is whether the file gave an image.
    raise ImageFileError(f"cannot read {path!r} as an image: {type(e).__name__}: "
                         f"{e}") from e
  if orientation in range(2, 9):  # 1: upright; other values are not orientations
    notes.insert(0, f"EXIF orientation {orientation} applied (rotated/flipped upright)")
  if frames > 1:  # an animation, a multi-page file or an MPO: say what is left out
    notes.insert(0, f"{frames} frames (an animation, pages, or a camera's extra "
                    "pictures): only the first is read")
  return rgb, notes


def load_image(path: str) -> np.ndarray:
  """``read_rgb(path)`` without the notes: uint8 (H, W, 3) RGB."""
  return read_rgb(path)[0]


def list_images(directory: str) -> list[str]:
  """Sorted paths of the PNG/JPEG files under ``directory``, recursively.

  Raises:
    ValueError: ``directory`` is empty or holds no such file.
    FileNotFoundError: ``directory`` does not exist.
  """
  if not directory:
    raise ValueError("No image directory given (data.train_dir / data.val_dir is "
                     "empty).")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Image directory {directory!r} does not exist.")
  paths = []
  for root, _, files in os.walk(directory, followlinks=True):
    paths.extend(os.path.join(root, f) for f in files
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  paths.sort()  # one order on every host and file system
  if not paths:
    raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under "
                     f"{directory!r}.")
  return paths


def write_png(path: str, image: np.ndarray) -> None:
  """Writes uint8 (H, W, 3) ``image`` to ``path`` (PNG, or the format that the
  extension names, as Pillow decides)."""
  Image.fromarray(np.asarray(image)).save(path)
