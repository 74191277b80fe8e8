"""Token embedding shared by MT and M2T.

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
