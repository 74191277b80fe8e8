"""Nested M2T: depth exits in one set of parameters and decode-time size
schedules (MaGNeTS-style decode-time scaling; docs/architecture.md).

The M2T of ``entropy/m2t.py`` with exits after ``exit_layers`` = (d_0 < ... <
d_{E-1} = num_layers) transformer blocks, each with its own LayerNorm and
mixture head. The last exit *is* an M2T: same parameter names (``transformer``'s
blocks and ``ln_final``, ``head``), so an M2T's parameters are the last exit's
and a nested model can be warm-started from a trained M2T; earlier exits add
``transformer/ln_exit_{d}`` and ``exit_heads_{e}``.

**Size schedules.** A size schedule names the exit of each of the S decode
steps (exit indices 0..E-1). Step i at exit e runs only the first d_e blocks for
group i's slots and writes their keys/values into those blocks' cache. A later
step at depth d needs the keys/values of blocks < d for every earlier slot, so a
schedule is *admissible* iff its exits never increase from step to step (the
full model early, smaller exits late, where most tokens are); others are refused
with a message naming the step. Under an admissible schedule the cached decode
computes exactly what one teacher-forced pass computes at that exit for those
slots (a slot's state after block l depends only on blocks <= l of its own and
earlier groups), so ``exit_bits``, one pass, gives the bits of every exit for
every group, and with them the rate of every schedule without decoding
(``experiments/size_schedules.py``).

Names (``resolve_size_schedule``): 'full' (the last exit at every step; decodes
exactly like the M2T of the same parameters), 'fast' (``fast_schedule`` if the
config sets one, else the exit before the last at every step), 'smallest' (exit
0 everywhere), or one exit index per step ('2,2,1,0' or a sequence). Why 'fast'
is the second-largest exit everywhere: of the Pareto schedules it saved the
most predicted decode time per % of rate (``experiments/size_schedules.py``,
docs/results/size_schedules.md); schedules that keep the full model for the
early steps save little time, because the late steps hold most of the tokens. The encoder
chooses; the stream stores the indices (``coding/bitstream.py``); the decoder
runs them.

Training: ``rate(train=True)`` is the weighted mean of the exits' bits
(``exit_weights``; all exits learn at once, as MaGNeTS trains its sizes jointly);
``rate(train=False)`` is the bits of the active schedule (``one_pass_rate``).

Shapes as in ``entropy/m2t.py``; ``exit_bits`` (E, B, L, C) in location order.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax.entropy import base, gmm
from m2t_jax.entropy.gmm import MixtureHead
from m2t_jax.entropy.m2t import M2T
from m2t_jax.nn import transformer as tfm

NAMES = ("full", "fast", "smallest")


class NestedM2T(M2T):
  """M2T with depth exits; see the module docstring."""
  exit_layers: tuple = ()  # d_0 < ... < d_{E-1} = num_layers; () = one exit
  exit_weights: tuple = ()  # training loss weight of each exit; () = equal
  default_schedule: str = "full"  # the schedule of resolve_size_schedule(None)
  fast_schedule: tuple = ()  # the exits of 'fast'; () = the rule above
  exit_schedule: tuple = ()  # the active schedule; () = default_schedule

  @classmethod
  def from_config(cls, config) -> "NestedM2T":
    n = config.nested
    return cls(**base.transformer_fields(config),
               exit_layers=tuple(int(d) for d in n.exit_layers),
               exit_weights=tuple(float(w) for w in n.exit_weights),
               default_schedule=str(n.size_schedule),
               fast_schedule=tuple(int(e) for e in n.fast_schedule))

  @classmethod
  def validate_config(cls, config) -> None:
    M2T.validate_config(config)
    layers, n = config.transformer.num_layers, config.nested
    exits = tuple(n.exit_layers)
    if (not exits or any(not isinstance(d, int) for d in exits)
        or list(exits) != sorted(set(exits)) or exits[0] < 1 or exits[-1] != layers):
      raise ValueError(f"nested.exit_layers must be increasing block counts in 1.."
                       f"{layers} ending at transformer.num_layers={layers}; got "
                       f"{exits}.")
    weights = tuple(n.exit_weights)
    if weights and (len(weights) != len(exits) or min(weights) < 0 or sum(weights) <= 0):
      raise ValueError(f"nested.exit_weights needs one weight >= 0 per exit "
                       f"({len(exits)}) and a positive sum; got {weights}.")
    model = cls.from_config(config)
    model.resolve_size_schedule("fast")
    model.resolve_size_schedule(None)

  def _exit_layers(self) -> tuple:
    return tuple(self.exit_layers) or (self.num_layers,)

  @property
  def num_exits(self) -> int:
    return len(self._exit_layers())

  def setup(self):
    self._setup_embeddings()
    self.transformer = tfm.NestedTransformer(
        self.num_layers, self.num_heads, self.mlp_dim, self.dropout,
        self.compute_dtype, exits=self._exit_layers())
    self.head = MixtureHead(self.latent_channels, self.num_mixtures, self.scale_floor)
    self.exit_heads = [MixtureHead(self.latent_channels, self.num_mixtures,
                                   self.scale_floor) for _ in self._exit_layers()[:-1]]

  def _heads(self):
    return [*self.exit_heads, self.head]

  # --- one pass -----------------------------------------------------------------
  def __call__(self, tokens: jax.Array, deterministic: bool = True) -> list:
    """Teacher-forced pass: tokens (B, L, C) -> one Mixture (B, L, C, K) per exit,
    location order."""
    x, mask = self._teacher_forced_inputs(tokens)
    outs, _ = self.transformer(x, mask=mask, deterministic=deterministic)
    return [self._to_locations(head(h)) for head, h in zip(self._heads(), outs, strict=True)]

  def exit_bits(self, tokens, targets, deterministic: bool = True) -> jax.Array:
    """(E, B, L, C) float32: bits of every element of ``targets`` at every exit."""
    return jnp.stack([gmm.bits(m, targets, self.prob_floor)
                      for m in self(tokens, deterministic)])

  def rate(self, tokens, targets, rng=None, train=False) -> base.Rate:
    """Training: the weighted mean of the exits' bits. Otherwise: the bits of the
    active size schedule (each cell at its step's exit), what decoding pays."""
    del rng
    bits = self.exit_bits(tokens, targets, deterministic=not train)
    if train:
      weights = np.asarray(self.exit_weights or (1.0,) * self.num_exits, np.float32)
      pick = (weights / weights.sum())[:, None, None, None]
    else:  # (E, 1, L, 1): 1 at each cell's exit, 0 elsewhere (an exact selection)
      exit_of_cell = np.asarray(self.active_schedule)[self.step_of_cell()]
      pick = (np.arange(self.num_exits)[:, None] == exit_of_cell[None])[:, None, :, None]
    pick = jnp.asarray(pick, jnp.float32)
    return base.Rate(jnp.sum(bits * pick, axis=0), jnp.ones(tokens.shape[:2], bool))

  def step_of_cell(self) -> np.ndarray:
    """(L,) int: the decode step that codes each cell."""
    sched = self.schedule
    step = np.empty(self.num_tokens, int)
    for i in range(sched.num_steps):
      step[sched.group(i)] = i
    return step

  # --- decoding -------------------------------------------------------------------
  def step(self, prev_values, cache, step, width: int, exit_index: int | None = None):
    """``M2T.step`` at exit ``exit_index`` (static; default the last): only the
    first exit_layers[exit_index] blocks run and write their cache."""
    layers = self._exit_layers()
    exit_index = len(layers) - 1 if exit_index is None else exit_index
    x, offset, visible = self._step_inputs(prev_values, step, width)
    outs, cache = self.transformer(x, cache=cache, offset=offset, visible=visible,
                                   depth=layers[exit_index])
    return self._heads()[exit_index](outs[-1]), cache

  def step_shape(self, step: int) -> tuple[int, int | None, int]:
    """``M2T.step_shape`` and the step's exit: steps of equal shape and exit share
    a compilation."""
    return (*super().step_shape(step), int(self.active_schedule[step]))

  def _decode_mixture(self, state, step, shape):
    width, static_step, exit_index = shape
    return self.step(state.prev, state.cache,
                     step if static_step is None else static_step, width, exit_index)

  # --- size schedules -------------------------------------------------------------
  @property
  def active_schedule(self) -> tuple:
    """The exits this model decodes with (``exit_schedule`` or the default's)."""
    return tuple(self.exit_schedule) or self.resolve_size_schedule(None)

  def resolve_size_schedule(self, spec=None) -> tuple:
    """None (the default), a name of ``NAMES``, 'e,e,...' or a sequence of exit
    indices -> the admissible tuple of S exit indices; ValueError otherwise."""
    steps, last = self.num_steps, self.num_exits - 1
    spec = self.default_schedule if spec is None else spec
    if isinstance(spec, str):
      text = spec.strip()
      if text == "full":
        schedule = (last,) * steps
      elif text == "smallest":
        schedule = (0,) * steps
      elif text == "fast":
        schedule = tuple(self.fast_schedule) or (max(last - 1, 0),) * steps
      elif re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", text):
        schedule = tuple(int(e) for e in text.split(","))
      else:
        raise ValueError(f"Unknown size schedule {spec!r}: expected one of {NAMES} "
                         f"or {steps} comma-separated exit indices in 0..{last}.")
    else:
      try:
        schedule = tuple(spec)
      except TypeError:
        raise ValueError(f"A size schedule is a name or a sequence of exit indices, "
                         f"got {spec!r}.") from None
      if not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool)
                 for e in schedule):
        raise ValueError(f"Size schedule exits must be integers, got {schedule!r}.")
      schedule = tuple(int(e) for e in schedule)
    self.check_size_schedule(schedule)
    return schedule

  def check_size_schedule(self, schedule) -> None:
    """ValueError unless ``schedule`` is S exit indices that never increase."""
    layers, steps = self._exit_layers(), self.num_steps
    if len(schedule) != steps:
      raise ValueError(f"A size schedule names one exit per decode step: this model "
                       f"decodes in {steps} steps, the schedule has {len(schedule)}.")
    for i, e in enumerate(schedule):
      if not 0 <= e < len(layers):
        raise ValueError(f"Size schedule {tuple(schedule)}: step {i} names exit {e}; "
                         f"this model's exits are 0..{len(layers) - 1} (after "
                         f"{', '.join(map(str, layers))} blocks).")
      if i and e > schedule[i - 1]:
        before = layers[schedule[i - 1]]
        missing = (f"block {layers[e]}" if layers[e] == before + 1
                   else f"blocks {before + 1}..{layers[e]}")
        raise ValueError(
            f"Size schedule {tuple(schedule)} is not admissible: step {i} runs exit "
            f"{e} (the first {layers[e]} blocks) after step {i - 1} ran exit "
            f"{schedule[i - 1]} (the first {before}), so {missing} never computed "
            f"the keys/values of the earlier steps' cells. Exits must not increase "
            f"from step to step.")

  def with_size_schedule(self, schedule) -> "NestedM2T":
    if not len(schedule):
      raise ValueError("A nested model decodes with an explicit size schedule (one "
                       "exit per step); none was given.")
    schedule = tuple(int(e) for e in schedule)
    self.check_size_schedule(schedule)
    return self.clone(exit_schedule=schedule)

