"""Coding an image to a size: the quality of a variable-rate model that hits a
target bits per pixel or byte count.

Two phases. The model's own rate estimate (one teacher-forced pass, or the
decode loop's distributions: ``EntropyCoder.estimate_bits``, on E's latent) is
cheap, so a bisection over the quality (0..100) on it finds the candidate
quality; then the real stream at that quality, with the requested effort, is
made and measured, and when its size is off by more than ``TOLERANCE`` a few
more bisection steps run on real streams around it. Size grows with quality
for a trained model (``tests/test_variable_rate.py`` checks it on photos); where
the target lies outside what the model reaches (below quality 0's stream or
above quality 100's), the nearest end is returned and the report says so.
"""

import dataclasses
import math
import numbers

import numpy as np

from m2t_jax.coding import bitstream
from m2t_jax.input_checks import check_image

TOLERANCE = 0.03  # relative size error a hit may have
_ESTIMATE_STEPS = 10  # bisection steps on the estimate: quality to within 0.1
_REAL_STEPS = 8  # at most this many more real streams when the estimate misses
_REAL_WINDOW = 8.0  # quality points either side of the estimate's quality


@dataclasses.dataclass(frozen=True)
class TargetReport:
  """What ``compress_to_target`` did.

  target_bytes: the target as bytes of the whole stream (target_bpp * pixels / 8).
  quality: the quality (0..100) of the returned stream; size_bytes: its length;
  bpp: its bits per pixel (8 * size_bytes / pixels); reached: whether it is
  within TOLERANCE of the target; streams: how many real streams were made;
  message: one sentence for a person.
  """
  target_bytes: float
  quality: float
  size_bytes: int
  bpp: float
  reached: bool
  streams: int
  message: str


def check_target(target_bpp, target_size) -> tuple[str, float]:
  """('bpp' or 'size', value) of the one target given; ValueError for none, both,
  or a value that is not a finite number > 0."""
  given = [(name, v) for name, v in (("bpp", target_bpp), ("size", target_size))
           if v is not None]
  if len(given) != 1:
    raise ValueError("give exactly one target: target_bpp or target_size.")
  name, value = given[0]
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
      math.isfinite(value) and value > 0):
    what = "bits per pixel" if name == "bpp" else "bytes"
    raise ValueError(f"target_{name} must be a finite number of {what} > 0, got {value!r}.")
  return name, float(value)


def compress_to_target(codec, image, target_bpp=None, target_size=None,
                       size_schedule=None, refine=None, effort=None):
  """(stream bytes, TargetReport); see the module docstring. ``codec``: a
  ``Codec`` of a variable-rate model (ValueError otherwise); image: uint8
  (H, W, 3); size_schedule, refine, effort: as ``Codec.compress``."""
  if not codec.variable_rate:
    raise ValueError(f"This model ({codec.name}) has one rate, so it cannot aim at a "
                     "size: target_bpp / target_size need a variable-rate model.")
  name, value = check_target(target_bpp, target_size)
  image = check_image(image)
  pixels = image.shape[0] * image.shape[1]
  target = value * pixels / 8 if name == "bpp" else value
  schedule = codec.entropy_model.resolve_size_schedule(size_schedule)
  overhead = bitstream.HEADER_BYTES + len(schedule)

  def estimated_bytes(quality):
    y_hat = codec.analyze(image, effort=0, quality=quality)
    bits = codec.entropy_coder.estimate_bits(y_hat, schedule, codec.rate_code(quality))
    return bits / 8 + overhead

  quality = _bisect(estimated_bytes, 0.0, 100.0, target, _ESTIMATE_STEPS, exact=False)
  made = {}

  def real_bytes(q):
    data = codec.compress(image, size_schedule, refine, effort, quality=q)
    made[q] = data
    return len(data)

  size = real_bytes(quality)
  if abs(size - target) > TOLERANCE * target:
    lo, hi = (quality, min(100.0, quality + _REAL_WINDOW)) if size < target else (
        max(0.0, quality - _REAL_WINDOW), quality)
    for end in (lo, hi):  # widen to the range's end when the window misses
      if end not in made:
        real_bytes(end)
    if len(made[lo]) > target:
      lo = 0.0
    if len(made[hi]) < target:
      hi = 100.0
    _bisect(real_bytes, lo, hi, target, _REAL_STEPS, exact=True, known=made)
  best = min(made, key=lambda q: (abs(len(made[q]) - target), q))
  data = made[best]
  reached = abs(len(data) - target) <= TOLERANCE * target
  bpp = 8 * len(data) / pixels
  wanted = f"{value:g} bpp" if name == "bpp" else f"{value:g} bytes"
  if reached:
    message = f"quality {best:.2f}: {len(data)} bytes ({bpp:.4f} bpp) for a target of {wanted}."
  else:
    end = ("even quality 0 makes a larger stream" if len(data) > target else
           "even quality 100 makes a smaller stream")
    message = (f"target of {wanted} not reachable with this model ({end}); the "
               f"nearest is quality {best:.2f}: {len(data)} bytes ({bpp:.4f} bpp)."
               if best in (0.0, 100.0) else
               f"target of {wanted} missed by more than {TOLERANCE:.0%}: the nearest "
               f"stream is quality {best:.2f}, {len(data)} bytes ({bpp:.4f} bpp).")
  return data, TargetReport(float(target), float(best), len(data), bpp, reached,
                            len(made), message)


def _bisect(size_of, lo: float, hi: float, target: float, steps: int, exact: bool,
            known: dict | None = None) -> float:
  """The quality in [lo, hi] whose size_of(q) is nearest ``target`` among those
  tried by ``steps`` bisection steps (size increasing in q); stops early when one
  is within TOLERANCE (``exact``: the real sizes) or the interval is below
  0.01 quality. The ends count as tried: the target may lie outside."""
  sizes = {} if known is None else {q: len(d) for q, d in known.items()}
  for q in (lo, hi):
    if q not in sizes:
      sizes[q] = size_of(q)
  for _ in range(steps):
    if hi - lo < 0.01:
      break
    mid = float(np.float32(0.5 * (lo + hi)))
    sizes[mid] = size_of(mid)
    if exact and abs(sizes[mid] - target) <= TOLERANCE * target:
      break
    lo, hi = (mid, hi) if sizes[mid] < target else (lo, mid)
  return min(sizes, key=lambda q: abs(sizes[q] - target))
