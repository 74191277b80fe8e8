"""What the codec takes in, checked before any work: images and latents.

``check_image`` and ``check_latent`` return the array in the form the codec
computes with, or raise ``ImageError`` / ``LatentError`` (both ValueErrors) with a
message that says what was expected and what came.
"""

import numpy as np

from m2t_jax.coding import bitstream


class ImageError(ValueError):
  """An input image the codec cannot take: not uint8 (H, W, 3), or too large."""


def check_image(image) -> np.ndarray:
  """The image if it is uint8 (H, W, 3) with sides in 1..65536; ImageError otherwise."""
  if not isinstance(image, np.ndarray):
    raise ImageError(f"Expected a numpy array, got {type(image).__name__}.")
  if image.dtype != np.uint8:
    raise ImageError(f"Expected uint8 pixels on 0..255, got dtype {image.dtype}.")
  if image.ndim != 3 or image.shape[2] != 3:
    raise ImageError(f"Expected an RGB image of shape (H, W, 3), got {image.shape}; "
                     "convert greyscale/alpha images to RGB first.")
  h, w = image.shape[:2]
  if not (1 <= h <= bitstream.MAX_IMAGE_SIDE and 1 <= w <= bitstream.MAX_IMAGE_SIDE):
    raise ImageError(f"Image sides must be 1..{bitstream.MAX_IMAGE_SIDE}, got {h}x{w}.")
  return image


# What the range coder can code exactly: int32 values (escape path included).
LATENT_MIN, LATENT_MAX = -(2**31), 2**31 - 1


class LatentError(ValueError):
  """A latent the coder cannot take: wrong shape, not integer, not finite, or
  outside int32."""


def check_latent(y_hat, channels: int, batched: bool = False) -> np.ndarray:
  """An integer-valued latent (h, w, C), or (N, h, w, C) when ``batched``, as
  int64; LatentError for any other shape, a non-numeric or bool dtype, NaN/inf,
  non-integer values or values outside int32 (what the range coder codes)."""
  y = np.asarray(y_hat)
  shape = "(N, h, w, {c})" if batched else "(h, w, {c})"
  if (y.ndim != 3 + batched or y.shape[-1] != channels or min(y.shape[:-1], default=0) < 1):
    raise LatentError(f"Expected a latent of shape {shape.format(c=channels)} with "
                      f"every side >= 1, got {y.shape}.")
  if max(y.shape[-3:-1]) > bitstream.MAX_IMAGE_SIDE:
    raise LatentError(f"Latent sides must be at most {bitstream.MAX_IMAGE_SIDE}, got "
                      f"{y.shape[-3]}x{y.shape[-2]}.")
  if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer)
                             or np.issubdtype(y.dtype, np.floating)):
    raise LatentError(f"Expected integer latent values, got dtype {y.dtype}.")
  if np.issubdtype(y.dtype, np.floating):
    if not np.all(np.isfinite(y)):
      raise LatentError("The latent has non-finite values (NaN or inf).")
    if not np.all(y == np.round(y)):
      raise LatentError("The latent has non-integer values; round it first.")
  if y.min() < LATENT_MIN or y.max() > LATENT_MAX:
    raise LatentError(f"Latent values must lie in [{LATENT_MIN}, {LATENT_MAX}] (int32), "
                      f"got [{y.min()}, {y.max()}].")
  return y.astype(np.int64)
