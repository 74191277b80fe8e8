"""MT: MaskGIT-like masked transformer with full attention.

Training masks a random 5%-99% of each patch's tokens (the mask vector replaces
them), runs full bidirectional attention and pays the bits of the masked tokens
only. Decoding runs S full passes: at step i the tokens coded so far are known,
the model predicts every unknown token, and the tokens of group i are coded with
those predictions. The group is either fixed (``schedules``) or chosen per
instance as the lowest-entropy unknown tokens (``select_lowest_entropy``).

Shapes: tokens (B, L, C) in location order; known (B, L) bool; mixture fields
(B, L, C, K) in location order.

As an ``entropy.base.EntropyModel``: ``rate`` pays the masked tokens of a random
mask (or of the all-masked input without an rng); decode state = the tokens
decoded so far and which are known; every step is one full pass, and one
compilation serves all steps (the step's cells are padded to the largest group).
"""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax.entropy import base, gmm, schedules
from m2t_jax.entropy.embedding import LocationEmbedding, RateEmbedding, TokenEmbedding
from m2t_jax.entropy.gmm import Mixture, MixtureHead
from m2t_jax.nn import transformer as tfm


@flax.struct.dataclass
class MTState:
  """MT's decode state: every full pass reads all tokens.

  tokens: (N, L, C) float32, the values decoded so far (zeros elsewhere).
  known: (N, L) bool, the cells decoded so far (and the padding cells).
  rate_level: (N,) float32, the rate level of a variable-rate model, else None.
  """
  tokens: jax.Array
  known: jax.Array
  rate_level: jax.Array | None = None


class MT(base.MaskedTransformerModel):
  """The MT entropy model of one w_T x w_T patch (fields: the base class's)."""
  mask_ratio_min: float = 0.05  # training masks: fraction ~ U(min, max)
  mask_ratio_max: float = 0.99
  rank_radius: int = 16  # the entropy-adaptive order ranks tokens by +-R tables
  # (narrower ones would lump the tail into the escape and look too certain)

  one_pass_rate = False  # the rate of S passes needs the decode loop
  full_pass_steps = True  # every decode step is one full pass

  @classmethod
  def from_config(cls, config) -> "MT":
    return cls(**base.transformer_fields(config),
               mask_ratio_min=config.mt_mask_ratio_min,
               mask_ratio_max=config.mt_mask_ratio_max,
               rank_radius=config.gmm.table_radius)

  @classmethod
  def validate_config(cls, config) -> None:
    if not 0 < config.mt_mask_ratio_min <= config.mt_mask_ratio_max <= 1:
      raise ValueError("Need 0 < mt_mask_ratio_min <= mt_mask_ratio_max <= 1.")

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
               deterministic: bool = True, rate_level=None) -> Mixture:
    """One full pass: predictions for every cell given the ``known`` ones.

    This is both the training forward (known = not masked) and a decode step.
    rate_level: (B,) of a variable-rate model, else None.
    """
    base.check_rate_level(self, rate_level)
    x = TokenEmbedding(self.d_model, self.embed_delta, name="token_embedding")(
        tokens, ~known)
    x = x + LocationEmbedding(self.num_tokens, self.d_model, name="location")(
        jnp.arange(self.num_tokens))
    if self.rate_anchors:
      x = base.add_rate_level(x, RateEmbedding(self.rate_anchors, self.d_model,
                                               name="rate_embedding"), rate_level)
    if self.embed_layernorm:
      x = nn.LayerNorm(name="embed_norm")(x)
    x, _ = tfm.Transformer(self.num_layers, self.num_heads, self.mlp_dim,
                           self.dropout, self.compute_dtype, name="transformer")(
                               x, deterministic=deterministic)
    return MixtureHead(self.latent_channels, self.num_mixtures, self.scale_floor,
                       name="head")(x)

  # --- the entropy-model interface ---------------------------------------------
  def rate(self, tokens, targets, rng=None, train=False, rate_level=None) -> base.Rate:
    """Bits of the masked tokens: a random mask from ``rng``, else all masked."""
    n, length, _ = tokens.shape
    if rng is None:
      masked = jnp.ones((n, length), bool)
    else:
      masked = random_mask(rng, n, length, self.mask_ratio_min, self.mask_ratio_max)
    mixture = self(tokens, ~masked, deterministic=not train, rate_level=rate_level)
    return base.Rate(gmm.bits(mixture, targets, self.prob_floor), masked)

  def coding_plan(self) -> tuple[base.PlannedStep, ...]:
    channels = (0, self.latent_channels)
    if self.order == "entropy":
      return tuple(base.PlannedStep(int(g), channels) for g in self.group_sizes)
    sched = self.schedule
    return tuple(base.PlannedStep(int(sched.sizes[i]), channels, sched.group(i))
                 for i in range(sched.num_steps))

  def init_decode_state(self, valid, rate_level=None) -> "MTState":
    """Nothing known but the padding cells (zeros, never coded)."""
    base.check_rate_level(self, rate_level)
    valid = np.asarray(valid)
    return MTState(tokens=jnp.zeros(valid.shape + (self.latent_channels,), jnp.float32),
                   known=jnp.asarray(~valid),
                   rate_level=None if rate_level is None else jnp.asarray(rate_level,
                                                                          jnp.float32))

  def step_shape(self, step: int) -> None:
    return None  # one full pass per step: one compilation serves them all

  def decode_step(self, state, step, shape=None):
    """One full pass; cells (N, g_max) padded to the largest group (traced step)."""
    del shape
    tokens, known = state.tokens, state.known
    g_max = int(self.group_sizes.max())
    mixture = self(tokens, known, rate_level=state.rate_level)
    if self.order == "entropy":
      # Rank tokens by the entropy of their full-width tables: a narrow table
      # lumps the tail into its escape and would make wide tokens look certain.
      _, full = gmm.coding_tables(mixture, self.rank_radius, self.prob_floor)
      entropy = jnp.sum(gmm.table_entropy_bits(full), axis=-1)  # bits per token
      cells = select_lowest_entropy(entropy, known, g_max)
    else:
      sched = self.schedule
      table = np.stack([np.pad(sched.group(i), (0, g_max - int(sched.sizes[i])),
                               mode="edge") for i in range(sched.num_steps)])
      cells = jnp.broadcast_to(jnp.asarray(table, jnp.int32)[step],
                               (tokens.shape[0], g_max))
    take = lambda t: jnp.take_along_axis(
        t, cells.reshape(cells.shape + (1,) * (t.ndim - 2)), axis=1)
    return cells, jax.tree.map(take, mixture), state

  def decode_update(self, state, step, cells, values):
    del step
    rows = np.arange(cells.shape[0])[:, None]
    return state.replace(
        tokens=state.tokens.at[rows, cells].set(jnp.asarray(values, jnp.float32)),
        known=state.known.at[rows, cells].set(True))


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


def select_lowest_entropy(entropy: jax.Array, known: jax.Array, size: int) -> jax.Array:
  """Entropy-adaptive group: the ``size`` unknown cells of least predicted entropy.

  entropy (B, L) float (bits per token), known (B, L) bool -> indices (B, size) int32,
  ascending by entropy with ties broken by cell index (a stable sort), so encoder
  and decoder pick the same cells from the same predictions.
  """
  masked = jnp.where(known, jnp.inf, entropy)
  return jnp.argsort(masked, axis=-1, stable=True)[:, :size].astype(jnp.int32)
