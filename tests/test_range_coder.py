"""Tests for m2t_jax.coding.range_coder: round trips, escapes, cost, garbage."""

import numpy as np
import pytest
from scipy import stats

from m2t_jax.coding import range_coder as rc

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_EXTREMES = [10**6, -(10**6), _INT32_MAX, _INT32_MIN + 1, _INT32_MIN]


def _random_tables(rng, n, radius, dtype=np.float32):
  """Random (centers int32 (n,), pmf (n, 2R+2)) with every symbol possible."""
  pmf = rng.dirichlet(np.ones(2 * radius + 2), size=n).astype(dtype)
  centers = rng.integers(-1000, 1000, size=n).astype(np.int32)
  return centers, pmf


def _peaked_tables(rng, n, radius, floor=1e-9):
  """Tables shaped like gmm.coding_tables: discretised Gaussians + escape mass."""
  centers = rng.integers(-50, 50, size=n).astype(np.int32)
  means = centers + rng.uniform(-0.5, 0.5, size=n)
  scales = np.exp(rng.uniform(np.log(0.1), np.log(6.0), size=n))
  grid = centers[:, None] + np.arange(-radius, radius + 1)
  upper = stats.norm.cdf((grid + 0.5 - means[:, None]) / scales[:, None])
  lower = stats.norm.cdf((grid - 0.5 - means[:, None]) / scales[:, None])
  window = upper - lower
  escape = np.maximum(1.0 - window.sum(axis=1), 0.0)
  pmf = np.maximum(np.concatenate([window, escape[:, None]], axis=1), floor)
  return centers, (pmf / pmf.sum(axis=1, keepdims=True)).astype(np.float32)


def _sample(rng, centers, pmf):
  """Values drawn from the tables; drawn escapes become center ± (R + 1).

  Returns (values int64 (n,), symbols (n,)). An escape with |d| = R + 1 has
  m = 1, k = 1, so its payload costs exactly 6 bits.
  """
  radius = (pmf.shape[1] - 2) // 2
  cdf = np.cumsum(pmf.astype(np.float64), axis=1)
  u = rng.random(len(centers)) * cdf[:, -1]
  symbols = np.minimum((u[:, None] > cdf).sum(axis=1), pmf.shape[1] - 1)
  sign = np.where(rng.random(len(centers)) < 0.5, -1, 1)
  values = np.where(symbols == 2 * radius + 1, centers + sign * (radius + 1),
                    centers + symbols - radius)
  return values.astype(np.int64), symbols


def _round_trip(values, centers, pmf):
  encoder = rc.new_encoder()
  rc.encode_group(encoder, values, centers, pmf)
  data = rc.finish(encoder)
  decoded = rc.decode_group(rc.new_decoder(data), centers, pmf)
  return decoded, data


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_with_escapes(dtype):
  rng = np.random.default_rng(0)
  n, radius = 1000, 8
  centers, pmf = _random_tables(rng, n, radius, dtype)
  # Mostly near the centre, some just outside the window, a few extremes.
  values = centers.astype(np.int64) + rng.integers(-3 * radius, 3 * radius + 1, n)
  values[:len(_EXTREMES)] = _EXTREMES
  values[len(_EXTREMES):20] = rng.integers(_INT32_MIN, _INT32_MAX, 20 - len(_EXTREMES))
  assert np.sum(np.abs(values - centers) > radius) > 100  # Escapes exercised.
  decoded, _ = _round_trip(values.astype(np.int32), centers, pmf)
  assert decoded.dtype == np.int32
  np.testing.assert_array_equal(decoded, values)


def test_round_trip_extreme_centers():
  # |value - center| up to 2**32 - 1: the largest escape magnitude.
  centers = np.array([_INT32_MIN, _INT32_MAX, _INT32_MIN, _INT32_MAX, 0], np.int32)
  values = np.array([_INT32_MAX, _INT32_MIN, _INT32_MIN, _INT32_MAX, _INT32_MIN])
  pmf = np.full((5, 6), 1.0, np.float32)
  decoded, _ = _round_trip(values, centers, pmf)
  np.testing.assert_array_equal(decoded, values)


def test_radius_zero_and_empty_group():
  rng = np.random.default_rng(1)
  centers = rng.integers(-5, 5, 50).astype(np.int32)
  pmf = rng.random((50, 2)) + 0.1
  values = centers + rng.integers(-2, 3, 50)
  decoded, _ = _round_trip(values, centers, pmf)
  np.testing.assert_array_equal(decoded, values)
  decoded, data = _round_trip(np.zeros(0, np.int32), np.zeros(0, np.int32),
                              np.zeros((0, 6)))
  assert decoded.shape == (0,) and data == b""


def test_groups_in_sequence():
  rng = np.random.default_rng(2)
  radius = 8
  groups = []
  encoder = rc.new_encoder()
  for n in [1, 17, 300, 0, 1000, 5]:
    centers, pmf = _random_tables(rng, n, radius)
    values = centers + rng.integers(-2 * radius, 2 * radius + 1, n)
    if n > 10:
      values[3] = -(10**6)
    rc.encode_group(encoder, values, centers, pmf)
    groups.append((values, centers, pmf))
  decoder = rc.new_decoder(rc.finish(encoder))
  for values, centers, pmf in groups:
    np.testing.assert_array_equal(rc.decode_group(decoder, centers, pmf), values)


def test_fortran_ordered_tables_decode_like_c_ordered():
  # constriction 0.5 misreads Fortran-ordered 2-D arrays; the glue must not.
  rng = np.random.default_rng(3)
  centers, pmf = _random_tables(rng, 200, 4)
  values, _ = _sample(rng, centers, pmf)
  encoder = rc.new_encoder()
  rc.encode_group(encoder, values, centers, np.asfortranarray(pmf))
  decoder = rc.new_decoder(rc.finish(encoder))
  np.testing.assert_array_equal(
      rc.decode_group(decoder, centers, np.ascontiguousarray(pmf)), values)


@pytest.mark.parametrize("tables", [_random_tables, _peaked_tables])
def test_cost_close_to_cross_entropy(tables):
  """Coded bits <= 1.01 * (sum of -log2 pmf[symbol] + 6 bits per escape) + 64."""
  rng = np.random.default_rng(4)
  n, radius = 5000, 8
  centers, pmf = tables(rng, n, radius)
  values, symbols = _sample(rng, centers, pmf)
  p = pmf.astype(np.float64)
  p /= p.sum(axis=1, keepdims=True)
  num_escapes = np.sum(symbols == 2 * radius + 1)
  ideal = -np.log2(p[np.arange(n), symbols]).sum() + 6 * num_escapes
  decoded, data = _round_trip(values, centers, pmf)
  np.testing.assert_array_equal(decoded, values)
  bits = 8 * len(data)
  assert bits <= 1.01 * ideal + 64, (bits, ideal)
  # And not suspiciously below the information content either.
  assert bits >= 0.99 * ideal - 64, (bits, ideal)


@pytest.mark.parametrize("k", [1, 2, 8, 16, 17, 18, 24, 31])
def test_escape_overhead(k):
  """An escape of magnitude m = |d| - R = 2**(k-1) costs k + 5 bits (< 2k + 5).

  Asserted: per escape, coded bits - (-log2 p(ESCAPE)) <= k + 5 + 0.1, where the
  0.1 covers the final partial word shared over 512 escapes.
  """
  num, radius = 512, 8
  pmf = np.full((num, 2 * radius + 2), 0.75 / (2 * radius + 1))
  pmf[:, -1] = 0.25  # -log2 = 2 bits.
  centers = np.full(num, 7, np.int32)
  sign = np.where(np.arange(num) % 2, 1, -1)
  values = centers + sign * (radius + 2**(k - 1))
  decoded, data = _round_trip(values, centers, pmf)
  np.testing.assert_array_equal(decoded, values)
  overhead = 8 * len(data) / num - 2.0
  assert overhead <= k + 5 + 0.1, overhead
  assert overhead >= k + 5 - 0.1, overhead  # The formula is the real cost.


def test_escaped_value_outside_int32_raises():
  # Encode d = 2**32 - 1 against center -2**31, decode against center 2**31 - 1:
  # the symbol stream is the same but the value would be about 2**33.
  pmf = np.full((1, 6), 1.0)
  encoder = rc.new_encoder()
  rc.encode_group(encoder, np.array([_INT32_MAX]), np.array([_INT32_MIN], np.int32), pmf)
  decoder = rc.new_decoder(rc.finish(encoder))
  with pytest.raises(rc.RangeCoderError, match="int32"):
    rc.decode_group(decoder, np.array([_INT32_MAX], np.int32), pmf)


def test_garbage_never_raises_other_errors():
  rng = np.random.default_rng(5)
  radius = 8
  centers, pmf = _random_tables(rng, 300, radius)
  values, _ = _sample(rng, centers, pmf)
  values[:len(_EXTREMES)] = _EXTREMES
  _, good = _round_trip(values, centers, pmf)
  outcomes = {"error": 0, "decoded": 0}
  for trial in range(200):
    if trial % 4 == 0:  # Truncated or extended valid data.
      cut = int(rng.integers(0, len(good) + 8))
      data = (good + rng.bytes(8))[:cut]
    else:
      data = rng.bytes(int(rng.integers(0, 64)))
    try:
      decoder = rc.new_decoder(data)
      for _ in range(3):  # Reading past the end must not hang or crash either.
        decoded = rc.decode_group(decoder, centers, pmf)
        assert decoded.shape == centers.shape and decoded.dtype == np.int32
      outcomes["decoded"] += 1
    except rc.RangeCoderError:
      outcomes["error"] += 1
  assert outcomes["error"] > 0  # Odd lengths at least.


def test_new_decoder_rejects_partial_words():
  with pytest.raises(rc.RangeCoderError, match="multiple|whole number"):
    rc.new_decoder(b"\x00" * 7)
  with pytest.raises(TypeError):
    rc.new_decoder("abcd")
  assert issubclass(rc.RangeCoderError, ValueError)


def test_finish_is_little_endian_words():
  rng = np.random.default_rng(6)
  centers, pmf = _random_tables(rng, 100, 3)
  values, _ = _sample(rng, centers, pmf)
  encoder = rc.new_encoder()
  rc.encode_group(encoder, values, centers, pmf)
  data = rc.finish(encoder)
  words = encoder.get_compressed()
  assert len(data) == 4 * len(words)
  assert data == b"".join(int(w).to_bytes(4, "little") for w in words)


@pytest.mark.parametrize("values, centers, pmf, match", [
    (np.zeros(3, np.int32), np.zeros(3, np.int32), np.ones(6), "2-D"),
    (np.zeros(3, np.int32), np.zeros(4, np.int32), np.ones((3, 6)), "rows"),
    (np.zeros(4, np.int32), np.zeros(3, np.int32), np.ones((3, 6)), "shape"),
    (np.zeros(3, np.int32), np.zeros(3, np.int32), np.ones((3, 5)), "even"),
    (np.zeros(3), np.zeros(3, np.int32), np.ones((3, 6)), "integer"),
    (np.zeros(3, np.int32), np.zeros(3), np.ones((3, 6)), "integer"),
    (np.array([0, 2**31, 0]), np.zeros(3, np.int32), np.ones((3, 6)), "int32"),
    (np.zeros(3, np.int32), np.zeros((3, 1), np.int32), np.ones((3, 6)), "1-D"),
    (np.zeros(3, np.int32), np.zeros(3, np.int32), np.full((3, 6), np.nan), "finite"),
    (np.zeros(3, np.int32), np.zeros(3, np.int32), -np.ones((3, 6)), "negative"),
    (np.zeros(3, np.int32), np.zeros(3, np.int32), np.zeros((3, 6)), "positive sum"),
    (np.zeros(3, np.int32), np.zeros(3, np.int32), np.ones((3, 6), int), "float"),
])
def test_invalid_inputs_raise_value_error(values, centers, pmf, match):
  with pytest.raises(ValueError, match=match):
    rc.encode_group(rc.new_encoder(), values, centers, pmf)
  if values.shape == (3,) and values.dtype == np.int32:  # Table-only checks.
    with pytest.raises(ValueError, match=match):
      rc.decode_group(rc.new_decoder(b"\x00" * 8), centers, pmf)
