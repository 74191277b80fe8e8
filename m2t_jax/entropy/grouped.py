"""GroupedMixer: spatial-channel groups, inner- and cross-group mixers, a context
cache (Li et al., arXiv 2405.01170; our reading in docs/architecture.md).

The patch's elements are cut into G = k_c * k_s groups (``grouping.py``): group
i = (channel slice c, spatial subset s), coded channel-slice-major (or
subset-major). Each group has one token per block (Q tokens), so a patch is a
(G, Q) grid of tokens of width d_model. Token (i, q):

* reads the values of group i-1 at block q (M2T's "masked twice" shift: a group's
  own values never enter its own tokens), embedded by the Dense of group i-1's
  slice (slices may differ in width), or a learned start vector for group 0; plus
  the embedding of its target cell and of its group i; then a LayerNorm;
* predicts the mixtures of group i's elements at its cell (slice c's channels),
  with the mixture head of slice c.

Layers alternate two mixers (pre-norm blocks of ``nn/transformer.py``):

* **inner-group**: bidirectional attention among the Q tokens of one group;
* **cross-group**: attention among the tokens of one block, causal along the
  group axis: token (i, q) sees (j, q) for every j <= i (``cross_scope``
  'block', the "same 2x2 cell"), or only i itself and the j whose values lie at
  its own cell ('cell', the "same spatial location"; ``grouping.cross_group_mask``).

Token (i, q) holds only values of groups < i, so both mixers are causal in the
groups, and alternating them reaches every earlier group at every block.

Two ways to run the same parameters:

* ``__call__``: the teacher-forced pass over all G x Q tokens (training, and the
  one-pass rate: ``one_pass_rate``);
* ``step``: decode step i runs only group i's Q tokens; each cross-group layer
  writes their keys/values at group index i of a static cache (N*Q, G, heads,
  head_dim) and attends to indices [0, i]; inner-group layers need no cache.

Shapes: tokens (N, L, C) in location order; ``__call__`` returns one Mixture per
slice, fields (N, L, w_c, K) in location order; ``step`` returns a Mixture (N, Q,
w_c, K) for the cells ``grouping.cells(i)``. Bits are base 2.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax.entropy import base, gmm, grouping
from m2t_jax.entropy.embedding import LocationEmbedding
from m2t_jax.entropy.gmm import Mixture, MixtureHead
from m2t_jax.nn import precision
from m2t_jax.nn import transformer as tfm

MIXERS = ("inner", "cross")


@functools.lru_cache(maxsize=64)
def _grouping(patch_size, channels, slices, spatial, block, phase_order, seed, order):
  return grouping.make_grouping(patch_size, channels, slices, spatial, block,
                                phase_order, seed, order)


def mixer_kinds(num_layers: int, first: str) -> tuple[str, ...]:
  """'inner' / 'cross' of each layer: alternating, starting with ``first``."""
  if first not in MIXERS:
    raise ValueError(f"first_mixer must be one of {MIXERS}, got {first!r}.")
  start = MIXERS.index(first)
  return tuple(MIXERS[(start + i) % 2] for i in range(num_layers))


class MixerStack(nn.Module):
  """Alternating inner-/cross-group pre-norm blocks and a final LayerNorm."""
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  first_mixer: str = "inner"
  dtype: str = "float32"  # compute dtype (nn/precision.py): the input is cast to it

  def setup(self):
    self.kinds = mixer_kinds(self.num_layers, self.first_mixer)
    self.blocks = [tfm.EncoderBlock(self.num_heads, self.mlp_dim, self.dropout)
                   for _ in self.kinds]
    self.ln_final = nn.LayerNorm()

  def __call__(self, x: jax.Array, cross_mask: np.ndarray,
               deterministic: bool = True) -> jax.Array:
    """Teacher-forced: x (N, G, Q, d) -> (N, G, Q, d); cross_mask (G, G) bool,
    which groups of its block a token may attend to (causal)."""
    n, g, q, d = x.shape
    x = x.astype(precision.dtype_of(self.dtype))
    mask = jnp.asarray(cross_mask)
    for kind, block in zip(self.kinds, self.blocks, strict=True):
      if kind == "inner":
        x = block(x.reshape(n * g, q, d), deterministic=deterministic)[0]
        x = x.reshape(n, g, q, d)
      else:
        y = x.transpose(0, 2, 1, 3).reshape(n * q, g, d)
        y = block(y, mask=mask, deterministic=deterministic)[0]
        x = y.reshape(n, q, g, d).transpose(0, 2, 1, 3)
    return self.ln_final(x)

  def step(self, x: jax.Array, cache: tfm.Cache, group: int,
           cross_mask: np.ndarray | None = None):
    """Decode step: x (N, Q, d), the tokens of group ``group`` (static) ->
    ((N, Q, d), cache). ``cache``: one {'k', 'v'} (N*Q, G, heads, head_dim) per
    cross-group layer, in layer order; this group's keys/values are written and
    the cached groups [0, group] attended to, those of ``cross_mask[group]`` only
    when given."""
    n, q, d = x.shape
    x = x.astype(precision.dtype_of(self.dtype))
    mask = None
    if cross_mask is not None and not cross_mask[group, :group + 1].all():
      mask = jnp.asarray(cross_mask[group:group + 1, :group + 1])
    new_cache = []
    caches = iter(cache)
    for kind, block in zip(self.kinds, self.blocks, strict=True):
      if kind == "inner":
        x = block(x)[0]
      else:
        y, layer_cache = block(x.reshape(n * q, 1, d), mask=mask, cache=next(caches),
                               offset=group)
        new_cache.append(layer_cache)
        x = y.reshape(n, q, d)
    return self.ln_final(x), new_cache


class SliceHeads(nn.Module):
  """One mixture head per channel slice: features (..., d) -> Mixture (..., w_c, K)."""
  slices: tuple[int, ...]
  num_mixtures: int
  scale_floor: float

  def setup(self):
    self.heads = [MixtureHead(w, self.num_mixtures, self.scale_floor) for w in self.slices]

  def __call__(self, x: jax.Array, slice_index: int) -> Mixture:
    return self.heads[slice_index](x)


class GroupedMixer(base.PatchTransformerModel):
  """The GroupedMixer entropy model of one w_T x w_T patch (module docstring)."""
  channel_slices: tuple[int, ...] | int = 2  # widths, or k_c equal slices
  spatial: str = "phases"  # phases | checkerboard | none
  block: tuple[int, int] = (2, 2)  # phases: block height, width
  phase_order: str = "qlds"  # phases: qlds | raster | random
  phase_seed: int = 0
  group_order: str = "slice_major"  # or subset_major
  first_mixer: str = "inner"  # inner | cross
  cross_scope: str = "block"  # block | cell
  num_mixtures: int = 3
  scale_floor: float = 0.01
  embed_delta: float = 5.0
  embed_layernorm: bool = True
  dropout: float = 0.0
  prob_floor: float = 2.0**-20
  compute_dtype: str = "float32"  # of the mixer stack (nn/precision.py)

  # step_shape(i) = i (the default): step i writes cache index i and predicts
  # channel group i's width, so each step compiles its own executable.
  one_pass_rate = True  # the teacher-forced pass equals the decode steps

  @classmethod
  def from_config(cls, config) -> "GroupedMixer":
    t, g = config.transformer, config.grouped
    slices = g.channel_slices
    return cls(
        latent_channels=config.latent_channels, patch_size=config.patch_size,
        d_model=t.d_model, num_layers=t.num_layers, num_heads=t.num_heads,
        mlp_dim=t.mlp_dim, dropout=t.dropout,
        channel_slices=slices if isinstance(slices, int) else tuple(slices),
        spatial=g.spatial, block=tuple(g.block), phase_order=g.phase_order,
        phase_seed=g.phase_seed, group_order=g.group_order,
        first_mixer=g.first_mixer, cross_scope=g.cross_scope,
        num_mixtures=config.gmm.num_mixtures, scale_floor=config.gmm.scale_floor,
        embed_delta=config.embed_delta, embed_layernorm=config.embed_layernorm,
        compute_dtype=config.get("compute_dtype", "float32"),
        prob_floor=config.gmm.prob_floor, rate_anchors=base.rate_anchors(config))

  @classmethod
  def validate_config(cls, config) -> None:
    model = cls.from_config(config)
    groups = model.grouping  # ValueError for impossible slices or subsets
    mixer_kinds(model.num_layers, model.first_mixer)
    grouping.cross_group_mask(groups, model.cross_scope)
    if model.num_layers < 1:
      raise ValueError("GroupedMixer needs transformer.num_layers >= 1.")
    if groups.num_groups > 255:  # the header's step count is a byte
      raise ValueError(f"{groups.num_groups} groups: at most 255 decode steps.")

  @property
  def grouping(self) -> grouping.Grouping:
    slices = self.channel_slices
    return _grouping(self.patch_size, self.latent_channels,
                     slices if isinstance(slices, int) else tuple(slices), self.spatial,
                     tuple(self.block), self.phase_order, self.phase_seed,
                     self.group_order)

  @property
  def cross_mask(self) -> np.ndarray:
    """(G, G) bool: the cross-group attention pattern (``cross_scope``)."""
    return grouping.cross_group_mask(self.grouping, self.cross_scope)

  def setup(self):
    groups = self.grouping
    self.start = self.param("start", nn.initializers.normal(0.02), (self.d_model,))
    # Input Dense per slice. Flax creates a submodule's parameters when it is
    # first called, so a slice that feeds no group (the last one when it is
    # coded last and alone) has none.
    self.inputs = [nn.Dense(self.d_model) for _ in groups.slices]
    self.cell_embedding = LocationEmbedding(self.num_tokens, self.d_model)
    self.group_embedding = LocationEmbedding(groups.num_groups, self.d_model)
    self.embed_norm = nn.LayerNorm() if self.embed_layernorm else None
    self.rate_embedding = self.rate_embedding_module()
    self.transformer = MixerStack(self.num_layers, self.num_heads, self.mlp_dim,
                                  self.dropout, self.first_mixer, self.compute_dtype)
    self.head = SliceHeads(groups.slices, self.num_mixtures, self.scale_floor)

  def _position(self, group: int) -> jax.Array:
    """(Q, d): target cell + group embedding of a group's tokens."""
    cells = jnp.asarray(self.grouping.cells(group))
    return self.cell_embedding(cells) + self.group_embedding(jnp.asarray(group))

  def _finish(self, x, rate_level):
    """Embedded tokens (N, ..., d) plus the rate level's embedding, normalised."""
    x = base.add_rate_level(x, self.rate_embedding, rate_level)
    return self.embed_norm(x) if self.embed_norm is not None else x

  def __call__(self, tokens: jax.Array, deterministic: bool = True,
               rate_level=None) -> tuple[Mixture, ...]:
    """Teacher-forced pass: tokens (N, L, C) -> one Mixture per slice, fields
    (N, L, w_c, K) in location order; rate_level (N,) of a variable-rate model."""
    base.check_rate_level(self, rate_level)
    groups = self.grouping
    n, num_groups = tokens.shape[0], groups.num_groups
    x = [jnp.broadcast_to(self.start, (n, groups.num_blocks, self.d_model))]
    for g in range(num_groups - 1):  # token g+1 reads group g (the last feeds none)
      c = groups.slice_of(g)
      values = tokens[:, groups.cells(g), slice(*groups.channels(c))]
      x.append(self.inputs[c](values / self.embed_delta))
    x = jnp.stack(x, axis=1)  # (N, G, Q, d)
    x = x + jnp.stack([self._position(i) for i in range(num_groups)])
    x = self.transformer(self._finish(x, rate_level), self.cross_mask, deterministic=deterministic)
    out = []
    for c in range(groups.num_slices):
      feats = x[:, groups.groups_of_slice(c)].reshape(n, self.num_tokens, self.d_model)
      mixture = self.head(feats, c)  # in the order of cells_of_slice(c)
      inverse = jnp.asarray(np.argsort(groups.cells_of_slice(c)))
      out.append(jax.tree.map(lambda t, inv=inverse: jnp.take(t, inv, axis=1), mixture))
    return tuple(out)

  def step(self, prev_values: jax.Array, cache: tfm.Cache, group: int, rate_level=None):
    """Decode step ``group`` (0-based, static).

    prev_values: (N, Q, w) the values of group-1 at ``grouping.cells(group-1)``
      (w = its slice's width; (N, Q, 0) for the first step); padding cells are 0.
    rate_level: (N,) of a variable-rate model, else None.
    Returns (Mixture (N, Q, w_c, K) of the group's elements, new cache).
    """
    base.check_rate_level(self, rate_level)
    groups = self.grouping
    if group:
      c_prev = groups.slice_of(group - 1)
      width = groups.slices[c_prev]
      if prev_values.shape[1:] != (groups.num_blocks, width):
        raise ValueError(f"Step {group} takes the values (N, {groups.num_blocks}, "
                         f"{width}) of group {group - 1}, got {prev_values.shape}.")
      x = self.inputs[c_prev](prev_values / self.embed_delta)
    else:
      x = jnp.broadcast_to(self.start, prev_values.shape[:2] + (self.d_model,))
    x = self._finish(x + self._position(group), rate_level)
    x, cache = self.transformer.step(x, cache, group, self.cross_mask)
    return self.head(x, groups.slice_of(group)), cache

  # --- the entropy-model interface ---------------------------------------------
  def rate(self, tokens, targets, rng=None, train=False, rate_level=None) -> base.Rate:
    """Teacher-forced bits (N, L, C) of ``targets``, all tokens paid; no ``rng``."""
    del rng
    groups = self.grouping
    mixtures = self(tokens, deterministic=not train, rate_level=rate_level)
    bits = [gmm.bits(m, targets[..., slice(*groups.channels(c))], self.prob_floor)
            for c, m in enumerate(mixtures)]
    return base.Rate(jnp.concatenate(bits, axis=-1), jnp.ones(tokens.shape[:2], bool))

  def coding_plan(self) -> tuple[base.PlannedStep, ...]:
    groups = self.grouping
    return tuple(base.PlannedStep(groups.num_blocks,
                                  groups.channels(groups.slice_of(i)), groups.cells(i))
                 for i in range(groups.num_groups))

  def init_decode_state(self, valid, rate_level=None) -> base.CacheState:
    """An empty cross-group k/v cache and no values yet (prev (N, Q, 0))."""
    base.check_rate_level(self, rate_level)
    n = np.asarray(valid).shape[0]
    groups = self.grouping
    return base.CacheState(
        cache=self.init_cache(n), prev=jnp.zeros((n, groups.num_blocks, 0), jnp.float32),
        rate_level=None if rate_level is None else jnp.asarray(rate_level, jnp.float32))

  def decode_step(self, state, step, shape: int):
    """Feeds group step-1's values, reads group ``step``'s mixtures (``shape`` is
    the step as a Python int)."""
    del step
    return base.shifted_cache_step(self, state, shape, self.grouping.cells(shape))

  def decode_update(self, state, step, cells, values):
    del step, cells  # the next step reads exactly this group, in block order
    return base.shifted_cache_update(state, values)

  def init_cache(self, batch: int, dtype=jnp.float32) -> tfm.Cache:
    """Empty cross-group cache of ``batch`` patches: (batch*Q, G, heads, head_dim)
    per cross-group layer."""
    groups = self.grouping
    num_cross = mixer_kinds(self.num_layers, self.first_mixer).count("cross")
    return tfm.init_cache(batch * groups.num_blocks, groups.num_groups, num_cross,
                          self.num_heads, self.d_model // self.num_heads, dtype)
