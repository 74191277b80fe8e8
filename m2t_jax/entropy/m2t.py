"""M2T: masked inputs *and* masked attention, decoded from a k/v cache (SPEC §7).

For a fixed schedule (order, sizes g_1 <= ... <= g_S) a patch's L = w_T^2 tokens
become L slots; group i owns slots [o_i, o_i + g_i) (``schedules.m2t_index_maps``).
Slot s reads the value of cell input_index[s] (or the mask token) and predicts
cell target_index[s]; attention is block-triangular. Two ways to run it:

* ``__call__``: the teacher-forced training pass over all L slots at once;
* ``step``: decode step i feeds only group i's g_i slots (group i-1's values and
  mask tokens), writes their keys/values into a static cache at [o_i, o_i+g_i),
  and returns the mixtures of group i's cells.

Each slot gets the embedding of its input location (when it has an input token)
plus that of its target location, so one model is valid for any schedule.

Shapes: tokens (B, L, C) in location order (``patches.to_patches``); mixture
fields (B, L, C, K) in location order for ``__call__``, and (B, g_i, C, K) in the
order of ``schedule.group(i)`` for ``step``.

As an ``entropy.base.EntropyModel``: ``rate`` is the teacher-forced pass (exactly
the decode steps' distributions, so ``one_pass_rate``); decode state = the k/v
cache and the previous group's values; step i has its own static shapes.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax.entropy import base, gmm, schedules
from m2t_jax.entropy.embedding import LocationEmbedding, TokenEmbedding
from m2t_jax.entropy.gmm import Mixture, MixtureHead
from m2t_jax.nn import transformer as tfm


@functools.lru_cache(maxsize=64)
def _static_maps(patch_size, num_steps, alpha, order, seed):
  sched = schedules.make_schedule(patch_size, num_steps, alpha, order, seed)
  maps = schedules.m2t_index_maps(sched.order, sched.sizes)
  return sched, maps, schedules.block_triangular_mask(sched.sizes)


class M2T(base.EntropyModel):
  """The M2T entropy model of one w_T x w_T patch."""
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
  order: str = "qlds"
  order_seed: int = 0
  prob_floor: float = 2.0**-20  # bits: -log2 of the floored bin mass

  static_steps = True  # step i has cache offset o_i and size g_i: static shapes
  one_pass_rate = True  # the teacher-forced pass equals the decode steps

  @classmethod
  def from_config(cls, config) -> "M2T":
    return cls(**base.transformer_fields(config))

  @classmethod
  def validate_config(cls, config) -> None:
    if config.schedule.order == "entropy":
      raise ValueError("schedule.order='entropy' is MT only; M2T needs a fixed order.")
    sizes = schedules.group_sizes(config.patch_size**2, config.schedule.num_steps,
                                  config.schedule.alpha)
    if np.any(np.diff(sizes) < 0):
      raise ValueError(f"M2T needs non-decreasing group sizes; schedule.alpha="
                       f"{config.schedule.alpha} gives {sizes.tolist()}. Use alpha >= 1.")

  @property
  def num_tokens(self) -> int:
    return self.patch_size * self.patch_size

  @property
  def schedule(self) -> schedules.Schedule:
    return self._maps()[0]

  def _maps(self):
    if self.order == "entropy":
      raise ValueError("M2T needs a fixed order: the entropy-adaptive order exists "
                       "only for MT; use qlds, random or raster.")
    return _static_maps(self.patch_size, self.num_steps, float(self.alpha),
                        self.order, self.order_seed)

  def setup(self):
    self.token_embedding = TokenEmbedding(self.d_model, self.embed_delta)
    self.input_location = LocationEmbedding(self.num_tokens, self.d_model)
    self.target_location = LocationEmbedding(self.num_tokens, self.d_model)
    self.embed_norm = nn.LayerNorm() if self.embed_layernorm else None
    self.transformer = tfm.Transformer(self.num_layers, self.num_heads, self.mlp_dim,
                                       self.dropout)
    self.head = MixtureHead(self.latent_channels, self.num_mixtures, self.scale_floor)

  def _embed(self, values, input_index, target_index):
    """Slots -> (B, n, d). values (B, n, C); input_index, target_index (n,) static."""
    is_mask = input_index < 0
    x = self.token_embedding(values, jnp.asarray(is_mask)[None])
    x = x + jnp.where(is_mask[:, None], 0.0,
                      self.input_location(jnp.asarray(np.maximum(input_index, 0))))
    x = x + self.target_location(jnp.asarray(target_index))
    return self.embed_norm(x) if self.embed_norm is not None else x

  def __call__(self, tokens: jax.Array, deterministic: bool = True) -> Mixture:
    """Teacher-forced pass: tokens (B, L, C) -> Mixture (B, L, C, K), location order."""
    sched, maps, mask = self._maps()
    inputs = jnp.take(tokens, jnp.asarray(np.maximum(maps.input_index, 0)), axis=1)
    x = self._embed(inputs, maps.input_index, maps.target_index)
    x, _ = self.transformer(x, mask=jnp.asarray(mask), deterministic=deterministic)
    mixture = self.head(x)  # slot order
    inverse = jnp.asarray(np.argsort(sched.order))
    return jax.tree.map(lambda t: jnp.take(t, inverse, axis=1), mixture)

  def step(self, prev_values: jax.Array, cache: tfm.Cache, step: int):
    """Decode step ``step`` (0-based, static).

    prev_values: (B, g_{i-1}, C), the values of group i-1's cells in the order of
      ``schedule.group(i-1)`` ((B, 0, C) for the first step); padded cells are 0.
    cache: from ``init_cache``; slots [o_i, o_i+g_i) are written.
    Returns (Mixture (B, g_i, C, K) for ``schedule.group(i)``, new cache).
    """
    sched, maps, _ = self._maps()
    o, g = int(sched.offsets[step]), int(sched.sizes[step])
    g_prev = int(sched.sizes[step - 1]) if step else 0
    if prev_values.shape[1] != g_prev:
      raise ValueError(f"Step {step} takes the {g_prev} values of group {step - 1}, "
                       f"got {prev_values.shape[1]}.")
    batch = prev_values.shape[0]
    values = jnp.concatenate(
        [prev_values, jnp.zeros((batch, g - g_prev, self.latent_channels),
                                prev_values.dtype)], axis=1)
    x = self._embed(values, maps.input_index[o:o + g], maps.target_index[o:o + g])
    x, cache = self.transformer(x, cache=cache, offset=o)
    return self.head(x), cache

  # --- the entropy-model interface ---------------------------------------------
  def rate(self, tokens, targets, rng=None, train=False) -> base.Rate:
    """Teacher-forced bits of every token (all paid); ``rng`` is unused."""
    del rng
    mixture = self(tokens, deterministic=not train)
    return base.Rate(gmm.bits(mixture, targets, self.prob_floor),
                     jnp.ones(tokens.shape[:2], bool))

  def coding_plan(self) -> tuple[base.PlannedStep, ...]:
    sched = self.schedule
    return tuple(base.PlannedStep(int(sched.sizes[i]), (0, self.latent_channels),
                                  sched.group(i)) for i in range(sched.num_steps))

  def init_decode_state(self, valid):
    """{'cache': empty k/v cache, 'prev': (N, 0, C)}: nothing decoded yet."""
    n = np.asarray(valid).shape[0]
    return {"cache": self.init_cache(n),
            "prev": jnp.zeros((n, 0, self.latent_channels), jnp.float32)}

  def decode_step(self, state, step: int):
    """Feeds group step-1's values, reads group ``step``'s mixtures (static step)."""
    return base.shifted_cache_step(self, state, step, self.schedule.group(step))

  def decode_update(self, state, step, cells, values):
    del step, cells  # the next step feeds exactly this group, in this order
    return base.shifted_cache_update(state, values)

  def init_cache(self, batch: int, dtype=jnp.float32) -> tfm.Cache:
    """Empty key/value cache for ``batch`` patches (all L slots)."""
    return tfm.init_cache(batch, self.num_tokens, self.num_layers, self.num_heads,
                          self.d_model // self.num_heads, dtype)
