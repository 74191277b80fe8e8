"""MT: MaskGIT-like masked transformer with full attention (SPEC §7).

Training masks a random 5%-99% of each patch's tokens (the mask vector replaces
them), runs full bidirectional attention and pays the bits of the masked tokens
only. Decoding runs S full passes: at step i the tokens coded so far are known,
the model predicts every unknown token, and the tokens of group i are coded with
those predictions. The group is either fixed (``schedules``) or chosen per
instance as the lowest-entropy unknown tokens (``select_lowest_entropy``).

Shapes: tokens (B, L, C) in location order; known (B, L) bool; mixture fields
(B, L, C, K) in location order.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax.entropy import schedules
from m2t_jax.entropy.embedding import LocationEmbedding, TokenEmbedding
from m2t_jax.entropy.gmm import Mixture, MixtureHead
from m2t_jax.nn import transformer as tfm


class MT(nn.Module):
  """The MT entropy model of one w_T x w_T patch."""
  latent_channels: int  # C
  patch_size: int  # w_T
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  num_mixtures: int = 3
  scale_floor: float = 0.01
  embed_delta: float = 5.0
  embed_layernorm: bool = True
  dropout: float = 0.0
  num_steps: int = 12
  alpha: float = 2.2
  order: str = "qlds"  # or 'entropy' (instance-adaptive)
  order_seed: int = 0

  @property
  def num_tokens(self) -> int:
    return self.patch_size * self.patch_size

  @property
  def group_sizes(self) -> np.ndarray:
    return schedules.group_sizes(self.num_tokens, self.num_steps, self.alpha)

  @property
  def schedule(self) -> schedules.Schedule:
    """The fixed schedule; an error for the entropy-adaptive order."""
    return schedules.make_schedule(self.patch_size, self.num_steps, self.alpha,
                                   self.order, self.order_seed)

  @nn.compact
  def __call__(self, tokens: jax.Array, known: jax.Array,
               deterministic: bool = True) -> Mixture:
    """One full pass: predictions for every cell given the ``known`` ones.

    This is both the training forward (known = not masked) and a decode step.
    """
    x = TokenEmbedding(self.d_model, self.embed_delta, name="token_embedding")(
        tokens, ~known)
    x = x + LocationEmbedding(self.num_tokens, self.d_model, name="location")(
        jnp.arange(self.num_tokens))
    if self.embed_layernorm:
      x = nn.LayerNorm(name="embed_norm")(x)
    x, _ = tfm.Transformer(self.num_layers, self.num_heads, self.mlp_dim,
                           self.dropout, name="transformer")(
                               x, deterministic=deterministic)
    return MixtureHead(self.latent_channels, self.num_mixtures, self.scale_floor,
                       name="head")(x)


def random_mask(rng: jax.Array, batch: int, num_tokens: int, ratio_min: float,
                ratio_max: float) -> jax.Array:
  """Training mask (B, L) bool, True = masked (to be predicted).

  Per example a ratio r ~ U(ratio_min, ratio_max) and exactly ceil(r * L) masked
  tokens (at least 1), chosen uniformly at random, as in MaskGIT.
  """
  rng_ratio, rng_rank = jax.random.split(rng)
  ratio = jax.random.uniform(rng_ratio, (batch, 1), minval=ratio_min, maxval=ratio_max)
  count = jnp.maximum(jnp.ceil(ratio * num_tokens), 1)
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(rng_rank, (batch, num_tokens)), -1), -1)
  return rank < count


def known_before_step(schedule: schedules.Schedule, step: int) -> np.ndarray:
  """Static (L,) bool: cells of groups < ``step`` of a fixed schedule."""
  known = np.zeros(len(schedule.order), bool)
  known[schedule.order[:schedule.offsets[step]]] = True
  return known


def select_lowest_entropy(entropy: jax.Array, known: jax.Array, size: int) -> jax.Array:
  """Entropy-adaptive group: the ``size`` unknown cells of least predicted entropy.

  entropy (B, L) float (bits per token), known (B, L) bool -> indices (B, size) int32,
  ascending by entropy with ties broken by cell index (a stable sort), so encoder
  and decoder pick the same cells from the same predictions.
  """
  masked = jnp.where(known, jnp.inf, entropy)
  return jnp.argsort(masked, axis=-1, stable=True)[:, :size].astype(jnp.int32)
