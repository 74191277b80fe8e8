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

**Width nesting** (MatFormer-style, ``nested.mlp_widths``): every block's MLP
also runs at its first h hidden units for each h of the widths (e.g. full, 1/2,
1/4 of mlp_dim); a schedule entry is then an (exit, width) pair, stored as one
code ``exit + 16 * width`` (the exit alone at full width, as depth-only streams
have it). Widths may change freely from step to step, growing or shrinking:
only the MLPs shrink, the residual stream and the attention keep their width,
so the keys and values an earlier step cached are what any later step expects,
whatever width computed them. The teacher-forced pass gives each slot the width
of the step that runs it (a per-slot mask over hidden units) and so computes
what cached decoding computes for any schedule; decode steps slice the weights
(fewer FLOPs, not masked ones). Names: 'smallest' is exit 0 at the narrowest
width; 'fast' with a single exit is the second-widest width everywhere.

Training: ``rate(train=True)`` is the weighted mean of the exits' bits
(``exit_weights``; all exits learn at once, as MaGNeTS trains its sizes jointly),
each example's steps at MLP widths drawn uniformly (per example and step);
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
# A schedule entry (one byte in the stream) is exit + WIDTH_CODE * width index;
# at full width (index 0) it is the exit itself, as in depth-only streams.
WIDTH_CODE = 16


def code(exit_index: int, width_index: int = 0) -> int:
  """The schedule code of (exit, MLP width index); ValueError outside 0..15."""
  if not (0 <= exit_index < WIDTH_CODE and 0 <= width_index < WIDTH_CODE):
    raise ValueError(f"Exit and width indices must lie in 0..{WIDTH_CODE - 1}, got "
                     f"({exit_index}, {width_index}).")
  return exit_index + WIDTH_CODE * width_index


def split_code(schedule_code: int) -> tuple[int, int]:
  """(exit index, MLP width index) of a schedule code."""
  return int(schedule_code) % WIDTH_CODE, int(schedule_code) // WIDTH_CODE


class NestedM2T(M2T):
  """M2T with depth exits; see the module docstring."""
  exit_layers: tuple = ()  # d_0 < ... < d_{E-1} = num_layers; () = one exit
  exit_weights: tuple = ()  # training loss weight of each exit; () = equal
  default_schedule: str = "full"  # the schedule of resolve_size_schedule(None)
  fast_schedule: tuple = ()  # the exits of 'fast'; () = the rule above
  exit_schedule: tuple = ()  # the active schedule (codes); () = default_schedule
  mlp_widths: tuple = ()  # MLP hidden widths as fractions of mlp_dim; () = (1.0,)

  @classmethod
  def from_config(cls, config) -> "NestedM2T":
    n = config.nested
    return cls(**base.transformer_fields(config),
               exit_layers=tuple(int(d) for d in n.exit_layers),
               exit_weights=tuple(float(w) for w in n.exit_weights),
               default_schedule=str(n.size_schedule),
               fast_schedule=tuple(int(e) for e in n.fast_schedule),
               mlp_widths=tuple(float(f) for f in n.get("mlp_widths", (1.0,))))

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
    fractions = tuple(n.get("mlp_widths", (1.0,)))
    mlp_dim = config.transformer.mlp_dim
    if (not fractions or fractions[0] != 1.0 or len(fractions) > WIDTH_CODE
        or any(not 0 < b < a for a, b in zip(fractions, fractions[1:], strict=False))
        or any(abs(f * mlp_dim - round(f * mlp_dim)) > 1e-6 for f in fractions)):
      raise ValueError(f"nested.mlp_widths must be 1.0 then decreasing fractions > 0 "
                       f"(at most {WIDTH_CODE}) of transformer.mlp_dim={mlp_dim}, each "
                       f"a whole number of hidden units; got {fractions}.")
    if len(exits) > WIDTH_CODE:
      raise ValueError(f"nested.exit_layers: at most {WIDTH_CODE} exits, got {len(exits)}.")
    model = cls.from_config(config)
    model.resolve_size_schedule("fast")
    model.resolve_size_schedule(None)

  def _exit_layers(self) -> tuple:
    return tuple(self.exit_layers) or (self.num_layers,)

  @property
  def num_exits(self) -> int:
    return len(self._exit_layers())

  def hidden_sizes(self) -> tuple:
    """The MLP hidden units of each width index (index 0 = mlp_dim)."""
    return tuple(int(round(f * self.mlp_dim)) for f in (self.mlp_widths or (1.0,)))

  @property
  def num_widths(self) -> int:
    return len(self.hidden_sizes())

  def _slot_hidden(self, width_of_step) -> np.ndarray | None:
    """(L,) hidden units of every slot, in slot order, from the width index of
    each step (None when every step runs the full width: the plain MLP)."""
    if not any(width_of_step):
      return None
    sizes = np.asarray(self.hidden_sizes())[np.asarray(width_of_step)]
    return np.repeat(sizes, self.schedule.sizes)

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
  def __call__(self, tokens: jax.Array, deterministic: bool = True, hidden=None,
               rate_level=None) -> list:
    """Teacher-forced pass: tokens (B, L, C) -> one Mixture (B, L, C, K) per exit,
    location order. hidden: None (full MLP width) or the MLP hidden units of
    every slot, (L,) or (B, L) int in slot order (the width of the step that
    runs the slot, so that the pass computes what cached decoding computes)."""
    x, mask = self._teacher_forced_inputs(tokens, rate_level)
    outs, _ = self.transformer(x, mask=mask, deterministic=deterministic, hidden=hidden)
    return [self._to_locations(head(h)) for head, h in zip(self._heads(), outs, strict=True)]

  def exit_bits(self, tokens, targets, deterministic: bool = True, hidden=None,
                rate_level=None) -> jax.Array:
    """(E, B, L, C) float32: bits of every element of ``targets`` at every exit."""
    return jnp.stack([gmm.bits(m, targets, self.prob_floor)
                      for m in self(tokens, deterministic, hidden, rate_level)])

  def rate(self, tokens, targets, rng=None, train=False, rate_level=None) -> base.Rate:
    """Training: the weighted mean of the exits' bits, each example's steps at
    random MLP widths (uniform over the widths, drawn per example and step with
    ``rng``, so that every width and every mix of widths is trained; without
    ``rng`` the full width). Otherwise: the bits of the active size schedule
    (each cell at its step's exit and width), what decoding pays."""
    if train:
      hidden = None
      if rng is not None and self.num_widths > 1:
        index = jax.random.randint(rng, (tokens.shape[0], self.num_steps), 0,
                                   self.num_widths)
        per_step = jnp.asarray(self.hidden_sizes(), jnp.int32)[index]  # (B, S)
        step_of_slot = np.repeat(np.arange(self.num_steps), self.schedule.sizes)
        hidden = per_step[:, step_of_slot]  # (B, L), slot order
    else:
      hidden = self._slot_hidden([split_code(c)[1] for c in self.active_schedule])
    bits = self.exit_bits(tokens, targets, deterministic=not train, hidden=hidden,
                          rate_level=rate_level)
    if train:
      weights = np.asarray(self.exit_weights or (1.0,) * self.num_exits, np.float32)
      pick = (weights / weights.sum())[:, None, None, None]
    else:  # (E, 1, L, 1): 1 at each cell's exit, 0 elsewhere (an exact selection)
      exits = [split_code(c)[0] for c in self.active_schedule]
      exit_of_cell = np.asarray(exits)[self.step_of_cell()]
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
  def step(self, prev_values, cache, step, width: int, exit_index: int | None = None,
           hidden: int | None = None, rate_level=None):
    """``M2T.step`` at exit ``exit_index`` (static; default the last) and MLP
    width ``hidden`` (static hidden units; None = all): only the first
    exit_layers[exit_index] blocks run and write their cache, with their MLP
    weights sliced to ``hidden`` units."""
    layers = self._exit_layers()
    exit_index = len(layers) - 1 if exit_index is None else exit_index
    x, offset, visible = self._step_inputs(prev_values, step, width, rate_level)
    outs, cache = self.transformer(x, cache=cache, offset=offset, visible=visible,
                                   depth=layers[exit_index], hidden=hidden)
    return self._heads()[exit_index](outs[-1]), cache

  def step_shape(self, step: int) -> tuple:
    """``M2T.step_shape``, the step's exit and its MLP hidden units (None =
    full): steps of equal shape share a compilation."""
    exit_index, width_index = split_code(self.active_schedule[step])
    hidden = self.hidden_sizes()[width_index] if width_index else None
    return (*super().step_shape(step), exit_index, hidden)

  def _decode_mixture(self, state, step, shape):
    width, static_step, exit_index, hidden = shape
    return self.step(state.prev, state.cache,
                     step if static_step is None else static_step, width, exit_index,
                     hidden, state.rate_level)

  # --- size schedules -------------------------------------------------------------
  @property
  def active_schedule(self) -> tuple:
    """The exits this model decodes with (``exit_schedule`` or the default's)."""
    return tuple(self.exit_schedule) or self.resolve_size_schedule(None)

  def resolve_size_schedule(self, spec=None) -> tuple:
    """None (the default), a name of ``NAMES``, 'e,e,...' / 'e:w,e:w,...' or a
    sequence of exit indices / (exit, width) pairs -> the admissible tuple of S
    schedule codes (``code``); ValueError otherwise."""
    steps, last = self.num_steps, self.num_exits - 1
    spec = self.default_schedule if spec is None else spec
    if isinstance(spec, str):
      text = spec.strip()
      if text == "full":
        schedule = (last,) * steps
      elif text == "smallest":
        schedule = (code(0, self.num_widths - 1),) * steps
      elif text == "fast":
        schedule = tuple(self.fast_schedule) or self._default_fast()
      elif re.fullmatch(r"\s*\d+(:\d+)?(\s*,\s*\d+(:\d+)?)*\s*", text):
        schedule = tuple(code(*(int(v) for v in part.split(":")))
                         for part in text.split(","))
      else:
        raise ValueError(f"Unknown size schedule {spec!r}: expected one of {NAMES} "
                         f"or {steps} comma-separated exit indices in 0..{last}, each "
                         f"optionally ':w' with an MLP width index in "
                         f"0..{self.num_widths - 1}.")
    else:
      try:
        items = tuple(spec)
      except TypeError:
        raise ValueError(f"A size schedule is a name or a sequence of exit indices, "
                         f"got {spec!r}.") from None
      schedule = []
      for item in items:
        pair = item if isinstance(item, (tuple, list)) else (item,)
        if not (1 <= len(pair) <= 2 and all(
            isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in pair)):
          raise ValueError(f"Size schedule entries must be integers (exits) or "
                           f"(exit, width) pairs, got {spec!r}.")
        schedule.append(code(*(int(e) for e in pair)) if len(pair) == 2 else int(pair[0]))
      schedule = tuple(schedule)
    self.check_size_schedule(schedule)
    return schedule

  def _default_fast(self) -> tuple:
    """'fast' without ``fast_schedule``: the exit before the last at full width
    with depth exits; with one exit, the second-widest MLP."""
    if self.num_exits > 1:
      return (self.num_exits - 2,) * self.num_steps
    return (code(0, min(1, self.num_widths - 1)),) * self.num_steps

  def check_size_schedule(self, schedule) -> None:
    """ValueError unless ``schedule`` is S codes whose exits exist and never
    increase from step to step and whose widths exist (widths may change
    freely: every width keeps the residual stream, so the cache stays exact)."""
    layers, steps = self._exit_layers(), self.num_steps
    if len(schedule) != steps:
      raise ValueError(f"A size schedule names one exit per decode step: this model "
                       f"decodes in {steps} steps, the schedule has {len(schedule)}.")
    exits = []
    for i, c in enumerate(schedule):
      if not 0 <= c < WIDTH_CODE * WIDTH_CODE:
        raise ValueError(f"Size schedule {tuple(schedule)}: step {i} has code {c}, "
                         f"outside 0..{WIDTH_CODE * WIDTH_CODE - 1}.")
      e, w = split_code(c)
      if not 0 <= e < len(layers):
        raise ValueError(f"Size schedule {tuple(schedule)}: step {i} names exit {e}; "
                         f"this model's exits are 0..{len(layers) - 1} (after "
                         f"{', '.join(map(str, layers))} blocks).")
      if w >= self.num_widths:
        raise ValueError(f"Size schedule {tuple(schedule)}: step {i} names MLP width "
                         f"{w}; this model's widths are 0..{self.num_widths - 1} "
                         f"({', '.join(map(str, self.hidden_sizes()))} hidden units).")
      exits.append(e)
    for i in range(1, steps):
      e, before_e = exits[i], exits[i - 1]
      if e > before_e:
        before = layers[before_e]
        missing = (f"block {layers[e]}" if layers[e] == before + 1
                   else f"blocks {before + 1}..{layers[e]}")
        raise ValueError(
            f"Size schedule {tuple(schedule)} is not admissible: step {i} runs exit "
            f"{e} (the first {layers[e]} blocks) after step {i - 1} ran exit "
            f"{before_e} (the first {before}), so {missing} never computed "
            f"the keys/values of the earlier steps' cells. Exits must not increase "
            f"from step to step.")

  def with_size_schedule(self, schedule) -> "NestedM2T":
    if not len(schedule):
      raise ValueError("A nested model decodes with an explicit size schedule (one "
                       "exit per step); none was given.")
    schedule = tuple(int(e) for e in schedule)
    self.check_size_schedule(schedule)
    return self.clone(exit_schedule=schedule)

