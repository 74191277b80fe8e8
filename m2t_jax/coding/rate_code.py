"""Quality, rate level and a stream's rate code: the one conversion between them.

A variable-rate model codes at a *quality* Q in 0..100, the user's knob; the
model is conditioned on the *rate level* t = Q / 100 in [0, 1] (``model.py``
maps t to its lambda). A stream records the level as a 16-bit *rate code*
round(t * RATE_CODE_MAX) (``bitstream.RATE_CODE_MAX`` = 65534; the format keeps
65535 for a fixed-rate model's stream), and both sides condition the model on
the float32 level code / RATE_CODE_MAX: the encoder on the level the stream
records, not on the quality asked for, so the decoder computes the same tables.
"""

import math
import numbers

import numpy as np

from m2t_jax.coding.bitstream import RATE_CODE_MAX

# The quality a variable-rate model codes at when a call names none: the middle
# of its range of lambdas.
DEFAULT_QUALITY = 50.0


def check_quality(quality) -> float:
  """``quality`` as a float if it is a finite number in [0, 100]; ValueError
  otherwise."""
  if isinstance(quality, bool) or not isinstance(quality, numbers.Real) or not (
      math.isfinite(quality) and 0 <= quality <= 100):
    raise ValueError(f"quality must be a number from 0 (smallest files) to 100 (best "
                     f"images), got {quality!r}.")
  return float(quality)


def code_of_quality(quality) -> int:
  """The rate code (0..RATE_CODE_MAX) of ``quality`` (0..100; ValueError otherwise)."""
  return round(check_quality(quality) / 100 * RATE_CODE_MAX)


def quality_of_code(rate_code: int | None) -> float | None:
  """The quality (0..100) a rate code stands for; None for None (a fixed-rate
  model's stream)."""
  return None if rate_code is None else 100.0 * rate_code / RATE_CODE_MAX


def level_of_code(rate_code: int | None, count: int | None = None):
  """The rate level (float32 in [0, 1]) of a rate code, repeated ``count`` times
  ((count,) float32 array) when given; None for None."""
  if rate_code is None:
    return None
  level = np.float32(rate_code) / np.float32(RATE_CODE_MAX)
  return level if count is None else np.full((count,), level, np.float32)
