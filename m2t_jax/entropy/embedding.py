"""Token embeddings: values and locations (MT, M2T), the rate level (every kind).

A token is one C-vector of y_hat. Known tokens enter as y_hat / delta, unknown ones
as a learned mask vector (C,), both through one Dense C -> d_model; learned
location embeddings are added; an optional LayerNorm follows (VCT).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

_POS_INIT = nn.initializers.normal(stddev=0.02)


class TokenEmbedding(nn.Module):
  """(values (B, n, C), is_mask (B|1, n) bool) -> (B, n, d_model), no positions."""
  d_model: int
  delta: float

  @nn.compact
  def __call__(self, values: jax.Array, is_mask: jax.Array) -> jax.Array:
    mask_vector = self.param("mask_vector", _POS_INIT, (values.shape[-1],))
    x = jnp.where(is_mask[..., None], mask_vector, values / self.delta)
    return nn.Dense(self.d_model, name="dense")(x)


class LocationEmbedding(nn.Module):
  """Learned embedding of a cell index in [0, num_locations): (...) int -> (..., d)."""
  num_locations: int
  d_model: int

  @nn.compact
  def __call__(self, index: jax.Array) -> jax.Array:
    table = self.param("embedding", _POS_INIT, (self.num_locations, self.d_model))
    return jnp.take(table, index, axis=0)


class RateEmbedding(nn.Module):
  """The rate level of a variable-rate model as a vector added to every token.

  (level (B,) float32 in [0, 1], 0 = the lowest rate) -> (B, 1, d_model): a
  learned table of ``num_anchors`` vectors at evenly spaced levels, interpolated
  linearly between the two nearest. Zero-initialised, so that a model
  warm-started from a fixed-rate one starts from exactly its predictions.
  """
  num_anchors: int
  d_model: int

  @nn.compact
  def __call__(self, level: jax.Array) -> jax.Array:
    table = self.param("embedding", nn.initializers.zeros, (self.num_anchors, self.d_model))
    low, frac = anchor_position(level, self.num_anchors)
    mixed = (table[low] * (1.0 - frac)[:, None] + table[low + 1] * frac[:, None])
    return mixed[:, None, :]


def anchor_position(level: jax.Array, num_anchors: int) -> tuple[jax.Array, jax.Array]:
  """(index of the anchor at or below each level (B,) int32 in [0, A-2], the
  fraction (B,) float32 in [0, 1] of the way to the next) for levels in [0, 1]
  and A >= 2 anchors at levels 0, 1/(A-1), ..., 1."""
  pos = jnp.clip(jnp.asarray(level, jnp.float32), 0.0, 1.0) * (num_anchors - 1)
  low = jnp.clip(jnp.floor(pos), 0, num_anchors - 2).astype(jnp.int32)
  return low, pos - low
