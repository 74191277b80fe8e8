"""M2T: masked inputs *and* masked attention, decoded from a k/v cache.

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
cache and the previous group's values (``base.CacheState``). How the steps compile is
``step_widths``: 'exact' runs each step at its own group size and static offset,
attending only to the cache prefix it needs (S compilations, no wasted work:
the CPU choice, where compiling is cheap and every padded row costs run time);
'shared' pads the steps to two widths with a traced offset (two compilations, for
accelerators, where each compilation takes seconds, at about 1.5x the
transformer's rows); 'auto' (default) picks 'exact' on CPU and 'shared' elsewhere.
Encoder and decoder on one backend pick the same, so their tables agree.
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


@functools.lru_cache(maxsize=64)
def _padded_maps(*key):
  """Host tables a padded step indexes with its traced step i: offsets (S,),
  sizes (S,), and the slot maps extended by g_max slots (input -1 = mask, target
  0) so that slots [o_i, o_i + width) always exist."""
  sched, maps, _ = _static_maps(*key)
  pad = int(sched.sizes.max())
  return (sched.offsets.astype(np.int32), sched.sizes.astype(np.int32),
          np.concatenate([maps.input_index, np.full(pad, -1)]).astype(np.int32),
          np.concatenate([maps.target_index, np.zeros(pad)]).astype(np.int32))


@functools.lru_cache(maxsize=64)
def _padded_groups(*key):
  """(S, g_max) int32: group i's cells, then repeats of its last cell."""
  sched = _static_maps(*key)[0]
  width = int(sched.sizes.max())
  return np.stack([np.pad(sched.group(i), (0, width - sched.sizes[i]), mode="edge")
                   for i in range(sched.num_steps)]).astype(np.int32)


STEP_WIDTHS = ("auto", "exact", "shared")


class M2T(base.MaskedTransformerModel):
  """The M2T entropy model of one w_T x w_T patch (fields: the base class's)."""
  step_widths: str = "auto"  # 'auto' | 'exact' | 'shared' (module docstring)

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
    return _static_maps(*self._map_key())

  def setup(self):
    self._setup_embeddings()
    self.transformer = tfm.Transformer(self.num_layers, self.num_heads, self.mlp_dim,
                                       self.dropout, self.compute_dtype)
    self.head = MixtureHead(self.latent_channels, self.num_mixtures, self.scale_floor)

  def _setup_embeddings(self):
    self.token_embedding = TokenEmbedding(self.d_model, self.embed_delta)
    self.input_location = LocationEmbedding(self.num_tokens, self.d_model)
    self.target_location = LocationEmbedding(self.num_tokens, self.d_model)
    self.embed_norm = nn.LayerNorm() if self.embed_layernorm else None
    self.rate_embedding = self.rate_embedding_module()

  def _embed(self, values, input_index, target_index, rate_level=None):
    """Slots -> (B, n, d). values (B, n, C); input_index, target_index (n,) int
    (numpy, or traced in a padded step); input -1 = the mask token; rate_level
    (B,) of a variable-rate model."""
    is_mask = jnp.asarray(input_index) < 0
    x = self.token_embedding(values, is_mask[None])
    x = x + jnp.where(is_mask[:, None], 0.0,
                      self.input_location(jnp.maximum(jnp.asarray(input_index), 0)))
    x = x + self.target_location(jnp.asarray(target_index))
    x = base.add_rate_level(x, self.rate_embedding, rate_level)
    return self.embed_norm(x) if self.embed_norm is not None else x

  def __call__(self, tokens: jax.Array, deterministic: bool = True,
               rate_level=None) -> Mixture:
    """Teacher-forced pass: tokens (B, L, C) -> Mixture (B, L, C, K), location
    order; rate_level (B,) of a variable-rate model."""
    x, mask = self._teacher_forced_inputs(tokens, rate_level)
    x, _ = self.transformer(x, mask=mask, deterministic=deterministic)
    return self._to_locations(self.head(x))

  def _teacher_forced_inputs(self, tokens, rate_level=None):
    """(embedded slots (B, L, d), block-triangular mask (L, L)) of all L slots."""
    base.check_rate_level(self, rate_level)
    _, maps, mask = self._maps()
    inputs = jnp.take(tokens, jnp.asarray(np.maximum(maps.input_index, 0)), axis=1)
    return (self._embed(inputs, maps.input_index, maps.target_index, rate_level),
            jnp.asarray(mask))

  def _to_locations(self, mixture: Mixture) -> Mixture:
    """Slot order -> location order (fields (B, L, ...))."""
    inverse = jnp.asarray(np.argsort(self._maps()[0].order))
    return jax.tree.map(lambda t: jnp.take(t, inverse, axis=1), mixture)

  def resolved_step_widths(self) -> str:
    """'exact' or 'shared': ``step_widths``, with 'auto' resolved for this
    process's backend."""
    if self.step_widths not in STEP_WIDTHS:
      raise ValueError(f"step_widths must be one of {STEP_WIDTHS}, got "
                       f"{self.step_widths!r}.")
    if self.step_widths == "auto":
      return "exact" if jax.default_backend() == "cpu" else "shared"
    return self.step_widths

  def with_step_widths(self, widths: str) -> "M2T":
    if widths not in STEP_WIDTHS:
      raise ValueError(f"step_widths must be one of {STEP_WIDTHS}, got {widths!r}.")
    return self if widths == self.step_widths else self.clone(step_widths=widths)

  def step_width(self, step: int) -> int:
    """G, the width step ``step`` runs at (static): g_i for exact steps; for
    shared ones ceil(g_max / 2) for the groups that fit it and g_max for the
    rest, so decoding compiles two executables per batch size instead of S."""
    sizes = self.schedule.sizes
    if self.resolved_step_widths() == "exact":
      return int(sizes[step])
    g_max = int(sizes.max())
    half = -(-g_max // 2)
    return half if int(sizes[step]) <= half else g_max

  def step(self, prev_values: jax.Array, cache: tfm.Cache, step, width: int,
           rate_level=None):
    """Decode step ``step`` (0-based; a Python int or a traced int32) at ``width``.

    prev_values: (B, P, C), P >= width: first the g_{i-1} values of group i-1's
      cells in the order of ``schedule.group(i-1)`` (nothing for the first step),
      then anything (ignored: those slots read the mask token).
    cache: from ``init_cache``; slots [o_i, o_i+width) are written (the real
      slots [o_i, o_i+g_i), then junk the next step overwrites).
    rate_level: (B,) of a variable-rate model, else None.
    width: static G >= g_i. A Python-int ``step`` with G = g_i is an exact step:
      static offset, attention over the cache prefix [0, o_i + g_i) only. Else a
      padded step: traced offset, attention over the whole cache masked to the
      slots written so far; steps of one width share one compilation.
    Returns (Mixture (B, width, C, K): its first g_i rows are ``schedule.group(i)``'s
    cells in order, the rest junk; new cache).
    """
    x, offset, visible = self._step_inputs(prev_values, step, width, rate_level)
    x, cache = self.transformer(x, cache=cache, offset=offset, visible=visible)
    return self.head(x), cache

  def _step_inputs(self, prev_values, step, width: int, rate_level=None):
    """(embedded slots (B, width, d), offset o_i, visible o_i + g_i) of step
    ``step`` at ``width`` (see ``step``)."""
    base.check_rate_level(self, rate_level)
    sched, _, _ = self._maps()
    if isinstance(step, (int, np.integer)) and not sched.sizes[step] <= width:
      raise ValueError(f"Step {step} predicts {sched.sizes[step]} cells; width "
                       f"{width} is too small.")
    if prev_values.shape[1] < width:
      raise ValueError(f"Step values must cover the width {width}, got "
                       f"{prev_values.shape[1]}.")
    offsets, sizes, input_index, target_index = _padded_maps(*self._map_key())
    if isinstance(step, (int, np.integer)) and width == sizes[step]:  # exact step
      slots = np.arange(offsets[step], offsets[step] + width)
      x = self._embed(prev_values[:, :width], input_index[slots], target_index[slots],
                      rate_level)
      return x, int(offsets[step]), None
    offsets, sizes, input_index, target_index = (
        jnp.asarray(a) for a in (offsets, sizes, input_index, target_index))
    i = jnp.asarray(step, jnp.int32)
    slots = offsets[i] + jnp.arange(width)
    x = self._embed(prev_values[:, :width], input_index[slots], target_index[slots],
                    rate_level)
    return x, offsets[i], offsets[i] + sizes[i]

  def _map_key(self):
    return (self.patch_size, self.num_steps, float(self.alpha), self.order,
            self.order_seed)

  # --- the entropy-model interface ---------------------------------------------
  def rate(self, tokens, targets, rng=None, train=False, rate_level=None) -> base.Rate:
    """Teacher-forced bits of every token (all paid); ``rng`` is unused."""
    del rng
    mixture = self(tokens, deterministic=not train, rate_level=rate_level)
    return base.Rate(gmm.bits(mixture, targets, self.prob_floor),
                     jnp.ones(tokens.shape[:2], bool))

  def coding_plan(self) -> tuple[base.PlannedStep, ...]:
    sched = self.schedule
    return tuple(base.PlannedStep(int(sched.sizes[i]), (0, self.latent_channels),
                                  sched.group(i)) for i in range(sched.num_steps))

  def step_shape(self, step: int) -> tuple[int, int | None]:
    """(width, the step itself for an exact step, else None): exact steps compile
    one each, shared ones one per width."""
    return self.step_width(step), (step if self.resolved_step_widths() == "exact" else None)

  def init_decode_state(self, valid, rate_level=None) -> base.CacheState:
    """An empty k/v cache and zero values: nothing decoded."""
    base.check_rate_level(self, rate_level)
    n = np.asarray(valid).shape[0]
    return base.CacheState(
        cache=self.init_cache(n),
        prev=jnp.zeros((n, self._max_width(), self.latent_channels), jnp.float32),
        rate_level=None if rate_level is None else jnp.asarray(rate_level, jnp.float32))

  def decode_step(self, state: base.CacheState, step, shape):
    """Feeds group step-1's values, reads group ``step``'s mixtures; ``step`` is
    traced, ``shape`` = ``step_shape(step)`` static. Cells (N, width): the
    group's, then (padded steps) copies of its last cell (rows the loop drops)."""
    mixture, cache = self._decode_mixture(state, step, shape)
    width, static_step = shape[0], shape[1]
    if static_step is not None:
      groups = jnp.asarray(self.schedule.group(static_step), jnp.int32)
    else:
      groups = jnp.asarray(_padded_groups(*self._map_key()))[jnp.asarray(step, jnp.int32)]
    cells = jnp.broadcast_to(groups[:width], (state.prev.shape[0], width))
    return cells, mixture, state.replace(cache=cache)

  def _decode_mixture(self, state: base.CacheState, step, shape):
    """(Mixture (N, width, C, K), cache) of a decode step of ``shape``."""
    width, static_step = shape[0], shape[1]
    return self.step(state.prev, state.cache,
                     step if static_step is None else static_step, width, state.rate_level)

  def decode_update(self, state: base.CacheState, step, cells, values) -> base.CacheState:
    """The next step feeds exactly this group's values (N, g, C), padded to g_max."""
    del step, cells
    values = np.asarray(values, np.float32)
    pad = self._max_width() - values.shape[1]
    return state.replace(prev=jnp.asarray(np.pad(values, ((0, 0), (0, pad), (0, 0)))))

  def _max_width(self) -> int:
    return int(self.schedule.sizes.max())

  def init_cache(self, batch: int, dtype=jnp.float32) -> tfm.Cache:
    """Empty key/value cache for ``batch`` patches: L slots and g_max spare ones
    (a padded step writes its full width)."""
    return tfm.init_cache(batch, self.num_tokens + self._max_width(),
                          self.num_layers, self.num_heads,
                          self.d_model // self.num_heads, dtype)
