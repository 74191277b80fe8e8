"""The interface every entropy model implements.

An entropy model sees the quantised latent cut into patches: ``tokens`` (N, L, C)
float32, N patches of L = w_T^2 tokens (cells) of C channels, in location order
(``patches.to_patches``). An *element* is one (cell, channel) of one patch. The
model predicts a Gaussian mixture (``gmm.Mixture``, fields (..., K)) for each
element; the range coder pays -log2 of the mixture's mass of the element's bin.

What a kind provides (and what everything above ``entropy/`` uses, nothing else):

1. **Training**: ``rate(tokens, targets, rng=None, train=False, rate_level=None)``
   -> ``Rate``: bits of every element of ``targets`` (N, L, C) in one pass, and
   which tokens the rate counts. ``rng`` is the kind's own randomness (for example
   MT's random masks) and is only given in training; dropout uses Flax's
   'dropout' rng. ``rate_level`` (N,) float32 in [0, 1]: the rate level of each
   patch's image, given to a variable-rate model (``rate_anchors`` > 0; see
   "Variable rate" below) and to no other.
2. **The coding plan**: ``coding_plan()`` -> one ``PlannedStep`` per decode step:
   how many cells it predicts, which channels, and which cells (or None when the
   cells are chosen at decode time from state both sides hold, as MT's
   entropy-adaptive order does). Every element of a patch is predicted by exactly
   one step.
3. **Decoding**, as an explicit state (maskgit's loop state, GIVT's cache):
   ``init_decode_state(valid, rate_level=None)`` -> a pytree of arrays, without
   parameters (it carries the rate level, so the steps need no other argument);
   ``decode_step(state, step, shape)`` (through ``apply`` with the parameters;
   ``step`` a traced int32, ``shape = step_shape(step)`` static) ->
   (cells int32 (N, g'), Mixture (N, g', c, K), new state), where g' >= g of the
   plan and the first g rows are the step's (a model may pad to share one
   compilation between steps);
   ``decode_update(state, step, cells, values)`` -> the state with the values
   (N, g, c) of the step's elements written in, again without parameters.
   The encoder runs exactly these functions with the true values, the decoder
   with the decoded ones, so both compute bit-identical distributions.

``step_shape(step)``: the static part of a step (hashable); steps with equal
shapes share one compilation of ``decode_step``. The default is the step itself
(one compilation per step, for kinds whose steps differ in shape, like
GroupedMixer's channel groups); MT's full passes return None (one for all); M2T
runs each group at its exact size on CPU and pads them to two shared widths on
accelerators, where compilations cost seconds each; the stream records which
(``resolved_step_widths``, ``with_step_widths``), and the decoder does the same.
``one_pass_rate``: True when ``rate(tokens, tokens)`` (train=False) gives exactly
the distributions the decode steps give (M2T's teacher-forced pass), so a rate
estimate needs no decode loop. ``full_pass_steps``: True when each decode step is
one full pass over all tokens (MT), so a decode costs S passes, not about one.

4. **Size schedules** (decode-time model scaling, docs/architecture.md), only for
   kinds with nested model sizes (``entropy/nested.py``):
   ``resolve_size_schedule(spec)`` turns the encoder's choice (None = the
   config's default, a name, or one exit index per step) into a tuple of exit
   indices, which the stream stores; ``with_size_schedule(schedule)`` is the
   model running it (a clone: the parameters are the same for every schedule).
   Both raise ValueError for a schedule the model cannot run. Kinds with one
   size keep the defaults: only the empty schedule ().

5. **Variable rate**: a model with ``rate_anchors`` = A > 0 is conditioned on a
   rate level in [0, 1] (``model.py`` maps it to the RD trade-off lambda): every
   token's embedding gets ``embedding.RateEmbedding(level)`` added, in training
   and in every decode step alike (``add_rate_level``); A = 0 (fixed rate) has no
   such parameters and takes no level. One embedding per token: decoding costs
   the same.

A kind also has ``from_config(config)`` (the module of a config) and
``validate_config(config)`` (ValueError for its impossible settings); the registry
(``entropy/registry.py``) maps ``config.model`` to the class.
"""

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax.entropy import embedding, gmm


class Rate(NamedTuple):
  """Training output of ``EntropyModel.rate``.

  bits: (N, L, C) float32, bits of each element's target.
  paid: (N, L) bool, the tokens whose bits the rate counts (all of them, or MT's
    masked ones; the model scales the paid tokens' mean to all valid tokens).
  """
  bits: jax.Array
  paid: jax.Array


@dataclasses.dataclass(frozen=True)
class PlannedStep:
  """One decode step of a coding plan.

  size: g, the number of cells the step predicts in every patch.
  channels: (start, stop), the channel slice predicted for those cells; (0, C)
    for a model that codes whole tokens.
  cells: (g,) int cell indices in the order of the step's outputs (then the
    first g cells ``decode_step`` returns must equal them; the loop uses these and
    does not fetch the step's), or None when the model chooses them at decode
    time from state (the same on both sides).
  """
  size: int
  channels: tuple[int, int]
  cells: np.ndarray | None = None

  @property
  def num_channels(self) -> int:
    return self.channels[1] - self.channels[0]


State = Any  # a pytree of arrays; each kind types its own (e.g. ``CacheState``)


@flax.struct.dataclass
class CacheState:
  """Decode state of a kind that feeds the last decoded group's values into a
  static key/value cache (M2T, GroupedMixer).

  cache: one {"k", "v"} dict per cached layer, each (N', slots, heads, head_dim)
    (``nn/transformer.py``; N' is N patches, or N x blocks for GroupedMixer).
  prev: (N, P, c) float32: the last decoded group's values in the order of its
    cells (P = the widest group for M2T, padded with zeros).
  rate_level: (N,) float32, the rate level of a variable-rate model, else None.
  """
  cache: list
  prev: jax.Array
  rate_level: jax.Array | None = None


class EntropyModel(nn.Module):
  """Base class of the entropy models. Subclasses are Flax modules that define the
  fields ``latent_channels`` (C) and ``patch_size`` (w_T) and the methods below."""

  one_pass_rate = False
  # True when every decode step is one full pass over all tokens (MT): a decode
  # then costs S passes rather than about one (tests/test_decode_cost.py).
  full_pass_steps = False

  # --- construction ---------------------------------------------------------
  @classmethod
  def from_config(cls, config) -> "EntropyModel":
    """The module of a full config (``config.model`` names this kind)."""
    raise NotImplementedError

  @classmethod
  def validate_config(cls, config) -> None:
    """Raises ValueError for settings this kind cannot run. Default: none."""
    del config

  @property
  def num_tokens(self) -> int:
    """L = w_T^2 cells per patch."""
    return self.patch_size * self.patch_size

  # --- training ---------------------------------------------------------------
  def rate(self, tokens: jax.Array, targets: jax.Array, rng: jax.Array | None = None,
           train: bool = False, rate_level: jax.Array | None = None) -> Rate:
    """Bits of ``targets`` (N, L, C) given ``tokens`` (N, L, C), in one pass."""
    raise NotImplementedError

  # --- coding -----------------------------------------------------------------
  def coding_plan(self) -> tuple[PlannedStep, ...]:
    """The decode steps, in order (see the module docstring)."""
    raise NotImplementedError

  def init_decode_state(self, valid: np.ndarray, rate_level=None) -> State:
    """Initial decode state of N patches; valid (N, L) bool marks real cells
    (padding cells are never coded; they hold 0); rate_level (N,) float32 for a
    variable-rate model, else None."""
    raise NotImplementedError

  def step_shape(self, step: int):
    """The static part of step ``step`` (see the module docstring)."""
    return step

  def decode_step(self, state: State, step, shape) -> tuple[jax.Array, gmm.Mixture,
                                                           State]:
    """Predicts step ``step`` (traced) of shape ``shape`` (static, ``step_shape``):
    (cells (N, g'), Mixture (N, g', c, K), state)."""
    raise NotImplementedError

  def decode_update(self, state: State, step: int, cells: np.ndarray,
                    values: np.ndarray) -> State:
    """Writes the step's values (N, g, c) (decoded, or true ones when encoding)."""
    raise NotImplementedError

  # --- step widths (kinds that can pad their steps override both) -------------
  def resolved_step_widths(self) -> str:
    """How this model runs its decode steps, as a stream records it: 'exact'
    (each step at its own shape) or 'shared' (padded to share compilations)."""
    return "exact"

  def with_step_widths(self, widths: str) -> "EntropyModel":
    """This model running its steps as ``widths`` ('auto', 'exact' or 'shared')
    says; a kind that never pads computes the same either way."""
    del widths
    return self

  # --- size schedules (kinds with nested sizes override both) -----------------
  def resolve_size_schedule(self, spec=None) -> tuple[int, ...]:
    """The exit index of every decode step that ``spec`` names; () for a kind
    with one size, which accepts only None or an empty spec."""
    if spec is None or (not isinstance(spec, str) and len(spec) == 0):
      return ()
    raise ValueError(f"Model kind {type(self).__name__} has one model size, so it "
                     f"takes no size schedule (got {spec!r}); size schedules need a "
                     "kind with nested model sizes.")

  def with_size_schedule(self, schedule: tuple[int, ...]) -> "EntropyModel":
    """This model decoding with ``schedule`` (from ``resolve_size_schedule`` or
    a stream's header); ValueError when it cannot run it."""
    if len(schedule):
      raise ValueError(f"Model kind {type(self).__name__} has one model size; a "
                       f"size schedule {tuple(schedule)} cannot run on it.")
    return self


class PatchTransformerModel(EntropyModel):
  """The fields of every kind built on a transformer over a w_T x w_T patch."""
  latent_channels: int  # C
  patch_size: int  # w_T
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  rate_anchors: int = 0  # A: a variable-rate model's RateEmbedding anchors; 0 = fixed rate

  def rate_embedding_module(self):
    """The RateEmbedding of a variable-rate model (for ``setup``), else None."""
    if not self.rate_anchors:
      return None
    return embedding.RateEmbedding(self.rate_anchors, self.d_model)


def check_rate_level(model, rate_level) -> None:
  """ValueError unless a variable-rate model gets a rate level and a fixed-rate
  one gets none."""
  if model.rate_anchors and rate_level is None:
    raise ValueError("This is a variable-rate entropy model: it needs a rate level "
                     "(N,) in [0, 1].")
  if not model.rate_anchors and rate_level is not None:
    raise ValueError("This entropy model has one rate: it takes no rate level.")


def add_rate_level(x: jax.Array, rate_embedding, rate_level) -> jax.Array:
  """x (N, ..., d) plus the rate level's embedding (N, 1, d) broadcast over the
  tokens; x unchanged for a fixed-rate model (``rate_embedding`` None)."""
  if rate_embedding is None:
    return x
  e = rate_embedding(jnp.asarray(rate_level, jnp.float32))  # (N, 1, d)
  return x + e.reshape(e.shape[:1] + (1,) * (x.ndim - 2) + e.shape[-1:]).astype(x.dtype)


class MaskedTransformerModel(PatchTransformerModel):
  """MT's and M2T's shared fields (``transformer_fields`` reads them from a
  config): mixture head, token embedding and the power schedule."""
  num_mixtures: int = 3
  scale_floor: float = 0.01
  embed_delta: float = 5.0
  embed_layernorm: bool = True
  dropout: float = 0.0
  num_steps: int = 12
  alpha: float = 2.2
  order: str = "qlds"  # qlds | random | raster; MT also 'entropy' (adaptive)
  order_seed: int = 0
  prob_floor: float = 2.0**-20  # bits: -log2 of the floored bin mass
  compute_dtype: str = "float32"  # of the transformer (nn/precision.py)


def shifted_cache_step(model, state: CacheState, step: int, cells):
  """``decode_step`` of a kind whose ``step(prev, cache, i)`` (i a Python int)
  feeds group i-1's values (``state.prev``) into a static k/v cache and reads
  group i's mixtures. cells: the group's cells (g,), the same in every patch.
  Returns (cells int32 (N, g), mixture, state)."""
  mixture, cache = model.step(state.prev, state.cache, step, rate_level=state.rate_level)
  cells = jnp.asarray(cells, jnp.int32)
  cells = jnp.broadcast_to(cells, (state.prev.shape[0], cells.shape[0]))
  return cells, mixture, state.replace(cache=cache)


def shifted_cache_update(state: CacheState, values) -> CacheState:
  """``decode_update`` of such a kind: the next step feeds exactly this group's
  values (N, g, c), in the order decoded."""
  return state.replace(prev=jnp.asarray(values, jnp.float32))


def transformer_fields(config) -> dict:
  """Constructor fields that MT-like kinds (patch transformer + mixture head with
  a power schedule) read from a config the same way."""
  t = config.transformer
  return dict(
      latent_channels=config.latent_channels, patch_size=config.patch_size,
      d_model=t.d_model, num_layers=t.num_layers, num_heads=t.num_heads,
      mlp_dim=t.mlp_dim, num_mixtures=config.gmm.num_mixtures,
      scale_floor=config.gmm.scale_floor, embed_delta=config.embed_delta,
      embed_layernorm=config.embed_layernorm, dropout=t.dropout,
      num_steps=config.schedule.num_steps, alpha=config.schedule.alpha,
      order=config.schedule.order, order_seed=config.schedule.seed,
      prob_floor=config.gmm.prob_floor,
      compute_dtype=config.get("compute_dtype", "float32"),
      rate_anchors=rate_anchors(config))


def rate_anchors(config) -> int:
  """A, the rate-level anchors of a config (``config.variable_rate.anchors``;
  0 for a fixed-rate config, which has no ``variable_rate``)."""
  variable = config.get("variable_rate")
  return int(variable.anchors) if variable is not None else 0


def check_plan(plan, num_tokens: int, num_channels: int) -> None:
  """Raises ValueError unless the fixed parts of ``plan`` cover every element of a
  patch exactly once (steps with cells=None are only checked for their sizes)."""
  count = np.zeros((num_tokens, num_channels), int)
  for i, step in enumerate(plan):
    start, stop = step.channels
    if not 0 <= start < stop <= num_channels or not 1 <= step.size <= num_tokens:
      raise ValueError(f"Step {i} of the plan: size {step.size}, channels "
                       f"{step.channels} do not fit {num_tokens} cells x "
                       f"{num_channels} channels.")
    if step.cells is not None:
      if len(step.cells) != step.size:
        raise ValueError(f"Step {i}: {len(step.cells)} cells for size {step.size}.")
      count[np.asarray(step.cells), start:stop] += 1
  if all(s.cells is not None for s in plan) and not np.all(count == 1):
    raise ValueError("The coding plan does not predict every element exactly once.")
  per_channel = np.zeros(num_channels, int)
  for step in plan:
    per_channel[step.channels[0]:step.channels[1]] += step.size
  if not np.all(per_channel == num_tokens):
    raise ValueError("The coding plan's sizes do not add up to every cell of every "
                     "channel.")
