"""Gaussian mixture head and the one formula for bin masses.

Units: latents and mixture means/scales are in latent units (the integer grid of
y_hat). ``log_bin_prob`` returns natural logs; ``bits`` returns bits (log base 2).

The mass of the unit bin centred at v under one component N(mu, sigma^2) is
Phi((v+1/2-mu)/sigma) - Phi((v-1/2-mu)/sigma). It is computed in log space from
the tail nearer to the bin (``log_ndtr`` stays accurate 40 sigma out, where the
plain difference is 0 - 0), mixed with logsumexp, and floored at ``prob_floor``
so that no integer has zero mass. Training (``bits``) and coding
(``coding_tables``) call the same ``floored_log_bin_prob``, so the rate the model is
trained on is the rate the range coder pays.
"""

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

_LN2 = 0.6931471805599453
# Bins narrower than this (in units of sigma) use the midpoint rule: there the
# difference of two nearly equal log-CDFs loses all precision in float32.
_NARROW_BIN = 1e-2
# Mixture means are clipped to this before rounding to the table centre, so that
# centres fit comfortably into int32 whatever the network outputs.
MAX_CENTER = 2**20


class Mixture(NamedTuple):
  """Per-element mixture: each field has shape (..., C, K), float32.

  logits: unnormalised log weights; means: latent units; scales: sigma > 0.
  """
  logits: jax.Array
  means: jax.Array
  scales: jax.Array


class MixtureHead(nn.Module):
  """Dense head: features (..., d) -> Mixture with fields (..., C, K)."""
  num_channels: int
  num_mixtures: int
  scale_floor: float = 0.01

  @nn.compact
  def __call__(self, x: jax.Array) -> Mixture:
    raw = nn.Dense(self.num_channels * self.num_mixtures * 3, name="dense")(x)
    raw = raw.astype(jnp.float32).reshape(
        x.shape[:-1] + (self.num_channels, self.num_mixtures, 3))
    return Mixture(
        logits=raw[..., 0],
        means=raw[..., 1],
        scales=self.scale_floor + jax.nn.softplus(raw[..., 2]))


def _log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, accurate near 0 and far from it."""
  return jnp.where(x > -_LN2, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _log_normal_bin(lower: jax.Array, upper: jax.Array) -> jax.Array:
  """log(Phi(upper) - Phi(lower)) for standardised bounds lower < upper."""
  # Use the tail nearer to the bin: Phi(b) - Phi(a) = Phi(-a) - Phi(-b).
  flip = lower + upper > 0
  a = jnp.where(flip, -upper, lower)
  b = jnp.where(flip, -lower, upper)
  log_b = log_ndtr(b)
  # Clamped away from 0 so the unused branch of the `where` below keeps finite
  # gradients (an inf there would turn the used branch's gradient into NaN).
  diff = jnp.minimum(log_ndtr(a) - log_b, -1e-20)
  exact = log_b + _log1mexp(diff)
  mid = 0.5 * (a + b)
  midpoint = -0.5 * mid * mid - 0.5 * jnp.log(2 * jnp.pi) + jnp.log(b - a)
  return jnp.where(b - a < _NARROW_BIN, midpoint, exact)


def log_bin_prob(mixture: Mixture, values: jax.Array) -> jax.Array:
  """Unfloored log mass (nats) of the unit bins centred at ``values`` (..., C)."""
  v = values[..., None]
  lower = (v - 0.5 - mixture.means) / mixture.scales
  upper = (v + 0.5 - mixture.means) / mixture.scales
  log_w = jax.nn.log_softmax(mixture.logits, axis=-1)
  return jax.nn.logsumexp(log_w + _log_normal_bin(lower, upper), axis=-1)


@jax.custom_vjp
def _lower_bound(x: jax.Array, bound: float) -> jax.Array:
  return jnp.maximum(x, bound)


def _lower_bound_fwd(x, bound):
  return jnp.maximum(x, bound), (x, bound)


def _lower_bound_bwd(res, g):
  # As tensorflow_compression's lower_bound: pass the gradient where x is above
  # the bound, or where descent would raise x back towards it, so that a value
  # stuck on the floor still pulls the mixture towards itself.
  x, bound = res
  pass_through = (x >= bound) | (g < 0)
  return jnp.where(pass_through, g, 0.0), None


_lower_bound.defvjp(_lower_bound_fwd, _lower_bound_bwd)


def floored_log_bin_prob(mixture: Mixture, values: jax.Array,
                         prob_floor: float) -> jax.Array:
  """log(max(p, prob_floor)) of the unit bins at ``values`` (..., C), in nats."""
  return _lower_bound(log_bin_prob(mixture, values), math.log(prob_floor))


def bits(mixture: Mixture, values: jax.Array, prob_floor: float) -> jax.Array:
  """Bits of the unit bins at ``values`` (..., C): the training rate per element."""
  return -floored_log_bin_prob(mixture, values, prob_floor) / _LN2


def mixture_mean(mixture: Mixture) -> jax.Array:
  """Mean of the mixture (..., C), latent units."""
  w = jax.nn.softmax(mixture.logits, axis=-1)
  return jnp.sum(w * mixture.means, axis=-1)


def table_centers(mixture: Mixture) -> jax.Array:
  """Integer centre of each element's coding window: round(mixture mean), (..., C) int32."""
  mean = jnp.clip(mixture_mean(mixture), -MAX_CENTER, MAX_CENTER)
  return jnp.round(mean).astype(jnp.int32)


def _phi_tail(z: jax.Array) -> jax.Array:
  """Phi(-|z|): the standard normal mass beyond |z|, accurate far into the tail."""
  return 0.5 * jax.scipy.special.erfc(jnp.abs(z) * (1 / math.sqrt(2)))


def coding_tables(mixture: Mixture, radius: int, prob_floor: float):
  """Per-element probability tables over a bounded window plus an escape symbol.

  Symbol j in [0, 2R] stands for the integer ``center - R + j``; symbol 2R+1 is the
  escape, whose mass is the mixture's mass outside the window. Every entry is
  floored at ``prob_floor`` and the table renormalised.

  The masses are the training formula's Phi((v+1/2-mu)/s) - Phi((v-1/2-mu)/s),
  evaluated in linear space from the tail nearer to each bin (no difference of
  two numbers near 1 is formed). Absolute error ~1e-8, below both the floor and
  the range coder's 2^-24 resolution; the log-space form is needed only for
  training gradients far in the tails. Encoder and decoder run this same code, so
  their tables are bit-identical.

  Every table entry is computed on its own from its two bounds (2 erfc per entry
  and component rather than 1 per shared edge). Why: the shared-edge form slices
  neighbouring entries along the short last axis inside the erfc fusion, which
  XLA:CPU turns into a scalar loop that recomputes the erfc per use, and sums
  over the mixture axis with a library reduction that is slow for K = 3; the
  purely elementwise form vectorises (several times faster on CPU;
  docs/results/decode_speed.md).

  Returns (centers int32 (..., C), pmf float32 (..., C, 2R+2)).
  """
  num_mixtures = mixture.means.shape[-1]
  component = lambda t, k: t[..., k:k + 1]  # (..., C, K) -> (..., C, 1)
  weights = jax.nn.softmax(mixture.logits, axis=-1)
  centers = table_centers(mixture)
  # Bounds of each entry relative to the centre: bin j is [j-R-1/2, j-R+1/2]; the
  # escape entry holds the two tails beyond [-R-1/2, R+1/2].
  n = 2 * radius + 2
  j = jnp.arange(n, dtype=jnp.float32)
  is_escape = j == n - 1
  lower = jnp.where(is_escape, -radius - 0.5, j - radius - 0.5)
  upper = jnp.where(is_escape, radius + 0.5, j - radius + 0.5)
  c = centers[..., None].astype(jnp.float32)
  pmf = jnp.zeros(centers.shape + (n,), jnp.float32)
  for k in range(num_mixtures):  # K is small (3): unrolled, summed in a fixed order.
    mean, scale = component(mixture.means, k), component(mixture.scales, k)
    lo = (c + lower - mean) / scale
    hi = (c + upper - mean) / scale
    t_lo, t_hi = _phi_tail(lo), _phi_tail(hi)
    # Below the mean Phi(z) = tail; above it Phi(z) = 1 - tail; a bin straddling
    # the mean takes one of each.
    inside = jnp.where(hi <= 0, t_hi - t_lo,
                       jnp.where(lo >= 0, t_lo - t_hi, 1.0 - t_lo - t_hi))
    outside = jnp.where(lo <= 0, t_lo, 1.0 - t_lo) + jnp.where(hi >= 0, t_hi, 1.0 - t_hi)
    pmf = pmf + component(weights, k) * jnp.where(is_escape, outside, inside)
  pmf = jnp.maximum(pmf, prob_floor)
  return centers, pmf / jnp.sum(pmf, axis=-1, keepdims=True)


def table_entropy_bits(pmf: jax.Array) -> jax.Array:
  """Entropy in bits of tables (..., n) -> (...)."""
  return -jnp.sum(pmf * jnp.log2(pmf), axis=-1)
