"""Mixture head and bin masses against scipy; tables; gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from m2t_jax.entropy import gmm


def _scipy_log_bin(v, logits, means, scales):
  """log sum_k w_k (Phi((v+.5-mu)/s) - Phi((v-.5-mu)/s)), float64, from the nearer tail."""
  w = special.log_softmax(logits)
  a = (v - 0.5 - means) / scales
  b = (v + 0.5 - means) / scales
  upper = a + b > 0
  # Upper tail: sf(a) - sf(b); lower tail: cdf(b) - cdf(a); both in log space.
  hi = np.where(upper, stats.norm.logsf(a), stats.norm.logcdf(b))
  lo = np.where(upper, stats.norm.logsf(b), stats.norm.logcdf(a))
  comp = hi + np.log1p(-np.exp(lo - hi))
  return special.logsumexp(w + comp)


def _cases(rng):
  for k in (1, 2, 3):
    for offset_sigmas in (0.0, 0.3, 2.0, 10.0, -25.0, 40.0, -40.0):
      logits = rng.normal(size=k)
      means = rng.normal(size=k) * 3
      scales = np.exp(rng.uniform(np.log(0.05), np.log(20.0), size=k))
      # v is offset_sigmas sigma away from the first component, on the integer grid.
      v = np.round(means[0] + offset_sigmas * scales[0])
      yield v, logits, means, scales


def test_matches_scipy():
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    for v, logits, means, scales in _cases(rng):
      mix = gmm.Mixture(jnp.asarray(logits)[None], jnp.asarray(means)[None],
                        jnp.asarray(scales)[None])
      ours = float(gmm.log_bin_prob(mix, jnp.asarray([v]))[0])
      ref = _scipy_log_bin(v, logits, means, scales)
      # |log p - log p_ref| <= 1e-6 is a relative error of 1e-6 on p, far tails too.
      assert abs(ours - ref) <= 1e-6, (
          v, logits, means, scales, ours, ref)


def test_float32_far_tails_are_finite_and_accurate():
  rng = np.random.default_rng(1)
  for v, logits, means, scales in _cases(rng):
    mix = gmm.Mixture(jnp.asarray(logits, jnp.float32)[None],
                      jnp.asarray(means, jnp.float32)[None],
                      jnp.asarray(scales, jnp.float32)[None])
    ours = float(gmm.log_bin_prob(mix, jnp.asarray([v], jnp.float32))[0])
    ref = _scipy_log_bin(v, logits.astype(np.float32).astype(float),
                         means.astype(np.float32).astype(float),
                         scales.astype(np.float32).astype(float))
    assert np.isfinite(ours)
    assert abs(ours - ref) <= 2e-5 * max(1.0, abs(ref)), (v, ours, ref)


def test_forty_sigma_tail_is_not_zero():
  mix = gmm.Mixture(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.ones((1, 1)))
  log_p = float(gmm.log_bin_prob(mix, jnp.asarray([40.0]))[0])
  assert np.isfinite(log_p) and log_p == pytest.approx(
      float(stats.norm.logsf(39.5) + np.log1p(-np.exp(stats.norm.logsf(40.5)
                                                      - stats.norm.logsf(39.5)))), rel=1e-5)


def test_floor_bounds_bits():
  mix = gmm.Mixture(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.full((1, 1), 0.01))
  b = gmm.bits(mix, jnp.asarray([1000.0]), 1e-9)
  assert float(b[0]) == pytest.approx(-np.log2(1e-9), rel=1e-6)


def _random_mixture(rng, shape, k, scale_lo=0.01, scale_hi=30.0):
  return gmm.Mixture(
      jnp.asarray(rng.normal(size=shape + (k,)), jnp.float32),
      jnp.asarray(rng.normal(size=shape + (k,)) * 5, jnp.float32),
      jnp.asarray(np.exp(rng.uniform(np.log(scale_lo), np.log(scale_hi), shape + (k,))),
                  jnp.float32))


def test_tables_sum_to_one_and_match_bins():
  rng = np.random.default_rng(2)
  mix = _random_mixture(rng, (50, 4), 3)
  radius = 6
  centers, pmf = gmm.coding_tables(mix, radius, 1e-9)
  assert pmf.shape == (50, 4, 2 * radius + 2) and centers.dtype == jnp.int32
  np.testing.assert_allclose(np.asarray(pmf.sum(-1)), 1.0, atol=1e-5)
  assert float(pmf.min()) > 0
  # Window entries are the bin masses of the same formula (before renormalisation,
  # which changes them by at most the floors added).
  for j in range(2 * radius + 1):  # every entry is computed on its own: check each
    v = (centers + j - radius).astype(jnp.float32)
    direct = jnp.exp(gmm.floored_log_bin_prob(mix, v, 1e-9))
    np.testing.assert_allclose(np.asarray(pmf[..., j]), np.asarray(direct), rtol=1e-4,
                               atol=2e-8, err_msg=f"entry {j}")
  # The escape entry is the mass outside the window: 1 - window mass.
  window = jnp.sum(jnp.exp(gmm.log_bin_prob(
      gmm.Mixture(*(t[..., None, :] for t in mix)),
      (centers[..., None] + jnp.arange(-radius, radius + 1)).astype(jnp.float32))), -1)
  expected_escape = np.maximum(1 - np.asarray(window, np.float64), 0)
  np.testing.assert_allclose(np.asarray(pmf[..., -1]), expected_escape, atol=3e-6)


def test_table_center_is_rounded_mixture_mean():
  mix = gmm.Mixture(jnp.log(jnp.asarray([[0.25, 0.75]])), jnp.asarray([[2.0, 6.0]]),
                    jnp.ones((1, 2)))
  assert int(gmm.table_centers(mix)[0]) == 5  # 0.25*2 + 0.75*6 = 5


def test_gradients_finite_in_extremes():
  rng = np.random.default_rng(3)

  def loss(params, values):
    mix = gmm.Mixture(*params)
    return jnp.sum(gmm.bits(mix, values, 1e-9))

  mix = _random_mixture(rng, (200,), 3, scale_lo=1e-3, scale_hi=1e4)
  values = jnp.asarray(rng.choice([0.0, 1.0, -3.0, 50.0, 1e4, -1e5], size=200), jnp.float32)
  grads = jax.grad(loss)(tuple(mix), values)
  for g in grads:
    assert bool(jnp.all(jnp.isfinite(g)))
  # Noisy (non-integer) targets as in training, and the gradient w.r.t. the values.
  noisy = values + jnp.asarray(rng.uniform(-0.5, 0.5, size=200), jnp.float32)
  g_values = jax.grad(lambda v: loss(tuple(mix), v))(noisy)
  assert bool(jnp.all(jnp.isfinite(g_values)))


def test_floored_values_still_pull_the_mean():
  # A value far in the tail sits on the floor; its gradient must still move the
  # mean towards it (lower_bound passes gradients that push the mass up).
  def loss(mean):
    mix = gmm.Mixture(jnp.zeros((1, 1)), mean[None, None], jnp.ones((1, 1)))
    return jnp.sum(gmm.bits(mix, jnp.asarray([100.0]), 1e-9))
  assert float(jax.grad(loss)(jnp.asarray(0.0))) < 0


def test_head_shapes_and_scale_floor():
  head = gmm.MixtureHead(num_channels=5, num_mixtures=3, scale_floor=0.01)
  x = jax.random.normal(jax.random.key(0), (2, 7, 16)) * 100
  params = head.init(jax.random.key(1), x)
  mix = head.apply(params, x)
  assert mix.logits.shape == mix.means.shape == mix.scales.shape == (2, 7, 5, 3)
  assert float(mix.scales.min()) >= np.float32(0.01)


def test_table_entropy_bits():
  pmf = jnp.asarray([[0.5, 0.5, 0.0 + 1e-30], [0.25, 0.25, 0.5]])
  np.testing.assert_allclose(np.asarray(gmm.table_entropy_bits(pmf)), [1.0, 1.5], atol=1e-5)
