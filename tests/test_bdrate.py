"""BD-rate: known shifts, clear errors, and the published Kodak numbers."""

import json
import os

import numpy as np
import pytest

from m2t_jax.evaluation import bdrate

CURVES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "third_party", "rd_curves")
BPP = [0.1, 0.2, 0.4, 0.8, 1.6]
PSNR = [28.0, 30.5, 33.2, 36.0, 39.1]


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_identical_curves_give_zero(method):
  assert bdrate.bd_rate(BPP, PSNR, BPP, PSNR, method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize("factor,expected", [(0.9, -10.0), (1.25, 25.0)])
def test_scaled_rates(method, factor, expected):
  scaled = [b * factor for b in BPP]
  assert bdrate.bd_rate(BPP, PSNR, scaled, PSNR, method) == pytest.approx(expected, abs=0.1)


def test_point_order_does_not_matter():
  order = [3, 0, 4, 1, 2]
  value = bdrate.bd_rate(BPP, PSNR, [BPP[i] * 0.9 for i in order], [PSNR[i] for i in order])
  assert value == pytest.approx(-10.0, abs=0.1)


def test_non_overlapping_curves_raise():
  with pytest.raises(ValueError, match="do not overlap"):
    bdrate.bd_rate(BPP, PSNR, [2, 3, 4, 5], [40.0, 41, 42, 43])


def test_too_few_points_and_bad_values_raise():
  with pytest.raises(ValueError, match="at least 4 points"):
    bdrate.bd_rate(BPP, PSNR, [0.2, 0.4, 0.8], [30, 33, 36], "cubic")
  with pytest.raises(ValueError, match="at least 2 points"):
    bdrate.bd_rate(BPP, PSNR, [0.2], [30])
  with pytest.raises(ValueError, match="rates <= 0"):
    bdrate.bd_rate(BPP, PSNR, [0.0, 0.4], [30, 33])
  with pytest.raises(ValueError, match="repeated PSNR"):
    bdrate.bd_rate(BPP, PSNR, [0.2, 0.4], [30, 30])
  with pytest.raises(ValueError, match="Unknown"):
    bdrate.bd_rate(BPP, PSNR, BPP, PSNR, "linear")


def _kodak(name):
  with open(os.path.join(CURVES, "kodak", f"{name}.json")) as f:
    r = json.load(f)["results"]
  return np.asarray(r["bpp"]), np.asarray(r["psnr-rgb"])


@pytest.mark.parametrize("name,expected", [
    ("elic-paper", -7.0), ("mlicplus-c3", -13.1), ("cheng2020-anchor-compressai", 3.7),
    ("mbt2018-compressai", 11.0), ("bmshj2018-hyperprior-compressai", 30.5),
    ("bpg444", 22.0)])
def test_published_kodak_bd_rates(name, expected):
  """The shipped curves reproduce the reference README's BD-rates vs VTM (PCHIP)."""
  anchor = _kodak("vtm")
  assert bdrate.bd_rate(*anchor, *_kodak(name)) == pytest.approx(expected, abs=0.05)
