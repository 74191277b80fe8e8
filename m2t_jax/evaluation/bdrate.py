"""Bjontegaard delta rate (BD-rate) between two rate-distortion curves.

``bd_rate(anchor_bpp, anchor_psnr, test_bpp, test_psnr)`` is the average
relative rate difference of the test curve against the anchor at equal PSNR,
in percent (negative: the test codec needs fewer bits). Both curves are
interpolated as log10(rate) over PSNR and integrated over the PSNR interval
where they overlap. The arithmetic is that of the ``bjontegaard`` package
(FAU-LMS, BSD-3-Clause); this module adds the checks that it only warns about
(no overlap, too few points, unsorted or repeated PSNR values).

Methods:
* ``pchip`` (default): piecewise cubic Hermite interpolation, as recommended in
  VCEG-AL22 / the JVET CTC; needs >= 2 points per curve.
* ``cubic``: the original VCEG-M33 cubic polynomial fit; needs >= 4 points.
* ``akima``: Akima splines; >= 2 points.
"""

import math

import numpy as np

METHODS = ("pchip", "cubic", "akima")
MIN_POINTS = {"pchip": 2, "cubic": 4, "akima": 2}


def _curve(bpp, psnr, which: str, method: str) -> tuple[np.ndarray, np.ndarray]:
  """Validated (bpp, psnr) float64 arrays, sorted by PSNR."""
  bpp = np.asarray(bpp, dtype=np.float64).reshape(-1)
  psnr = np.asarray(psnr, dtype=np.float64).reshape(-1)
  if bpp.shape != psnr.shape:
    raise ValueError(f"The {which} curve has {bpp.size} rates but {psnr.size} PSNR values.")
  if bpp.size < MIN_POINTS[method]:
    raise ValueError(f"BD-rate ({method}) needs at least {MIN_POINTS[method]} points per "
                     f"curve; the {which} curve has {bpp.size}.")
  if not (np.all(np.isfinite(bpp)) and np.all(np.isfinite(psnr))):
    raise ValueError(f"The {which} curve has non-finite values: bpp {bpp.tolist()}, "
                     f"PSNR {psnr.tolist()}.")
  if np.any(bpp <= 0):
    raise ValueError(f"The {which} curve has rates <= 0 (log rate is undefined): "
                     f"{bpp.tolist()}.")
  order = np.argsort(psnr, kind="stable")
  bpp, psnr = bpp[order], psnr[order]
  if np.any(np.diff(psnr) <= 0):
    raise ValueError(f"The {which} curve has repeated PSNR values {psnr.tolist()}; the "
                     "interpolation of rate over PSNR needs distinct values.")
  return bpp, psnr


def overlap(anchor_psnr, test_psnr) -> tuple[float, float]:
  """The PSNR interval (dB) covered by both curves; (lo, hi) with lo < hi.

  Raises:
    ValueError: the curves do not overlap (or only touch in one point).
  """
  lo = max(float(np.min(anchor_psnr)), float(np.min(test_psnr)))
  hi = min(float(np.max(anchor_psnr)), float(np.max(test_psnr)))
  if not hi > lo:
    raise ValueError(
        f"The curves do not overlap in PSNR (anchor {np.min(anchor_psnr):.2f}..."
        f"{np.max(anchor_psnr):.2f} dB, test {np.min(test_psnr):.2f}..."
        f"{np.max(test_psnr):.2f} dB): BD-rate is undefined. Choose an anchor "
        "that covers the test curve's quality range, or add rate points.")
  return lo, hi


def bd_rate(anchor_bpp, anchor_psnr, test_bpp, test_psnr, method: str = "pchip") -> float:
  """BD-rate of the test curve against the anchor, in percent.

  Args:
    anchor_bpp, anchor_psnr: the anchor's rates (bits per pixel, > 0) and
      PSNR values (dB), one per RD point, in any order.
    test_bpp, test_psnr: the same for the test codec.
    method: 'pchip' (default), 'cubic' or 'akima'.

  Returns:
    100 (10^mean(log10 R_test - log10 R_anchor) - 1) over the overlapping PSNR
    range: -10.0 means 10% fewer bits than the anchor at the same quality.

  Raises:
    ValueError: unknown method, too few points, bad values, or no overlap.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown BD-rate method {method!r}; use one of {METHODS}.")
  a_bpp, a_psnr = _curve(anchor_bpp, anchor_psnr, "anchor", method)
  t_bpp, t_psnr = _curve(test_bpp, test_psnr, "test", method)
  overlap(a_psnr, t_psnr)
  import bjontegaard  # noqa: PLC0415 - imports matplotlib; only when needed

  value = bjontegaard.bd_rate(a_bpp, a_psnr, t_bpp, t_psnr, method,
                              require_matching_points=False, min_overlap=0)
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"BD-rate ({method}) is not finite for these curves.")
  return value
