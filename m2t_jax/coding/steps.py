"""The coding steps of any entropy model, as one iterator.

Encoding, decoding, rate estimation and progressive decoding are all the same
loop over an entropy model's coding plan (``entropy/base.py``); they differ only
in what they do with each step's tables and which values they feed back:

    loop = CodingLoop(model, params, config, valid)
    for step in loop:                    # a CodingStep per planned step
      group = step.take(values)          # (N, g, c): the step's elements
      ...                                # range code / decode / count bits
      step.feed(group)                   # the values the next steps see

The encoder feeds the true values, the decoder the values it has just decoded
(equal), so both run the very same jitted step with the very same inputs and
get bit-identical tables: the invariant range decoding needs. The
narrow tables are built inside that jitted step, never on another path.

Shapes: N patches of L cells with C channels; ``values`` (N, L, C) host arrays in
location order; a step predicts g cells x c channels of every patch.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax.coding import determinism, tables
from m2t_jax.entropy import base, gmm


@dataclasses.dataclass
class CodingStep:
  """One step of the loop: what it predicts and its coding tables.

  index: the step's position in the plan.
  cells: int (N, g), the cell of each predicted row, per patch.
  channels: the channel slice it predicts (c channels).
  todo: bool (N, g, c), the elements to code (not padding, not known yet).
  centers: int32 (N, g, c) host; pmf: float32 (N, g, c, 2r+2) host (narrow tables).
  mixture: gmm.Mixture with fields (N, g, c, K), on device.
  """
  index: int
  cells: np.ndarray
  channels: slice
  todo: np.ndarray
  centers: np.ndarray
  pmf: np.ndarray
  mixture: gmm.Mixture
  _loop: "CodingLoop"

  @property
  def _rows(self):
    return np.arange(self.cells.shape[0])[:, None]

  def take(self, values: np.ndarray) -> np.ndarray:
    """The step's elements (N, g, c) of ``values`` (N, L, C) (a copy)."""
    return values[self._rows, self.cells, self.channels]

  def put(self, values: np.ndarray, group: np.ndarray) -> None:
    """Writes ``group`` (N, g, c) into ``values`` (N, L, C) in place."""
    values[self._rows, self.cells, self.channels] = group

  def feed(self, group: np.ndarray) -> None:
    """Gives the step's values (N, g, c) to the model; required before the next
    step (it is what the next steps are conditioned on)."""
    self._loop._feed(self, group)


class CodingLoop:
  """Iterates an entropy model's decode steps over N patches.

  model: a ``base.EntropyModel``; params: its parameters; config: the full config
  (gmm fields); valid: bool (N, L), the real cells (padding is never coded);
  rate_level: a variable-rate model's level (a float in [0, 1], the same for
  every patch), else None.
  ``steps_s`` accumulates the seconds of the jitted steps (model + tables,
  including the transfer of the tables to the host).
  """

  def __init__(self, model: base.EntropyModel, params, config, valid: np.ndarray,
               rate_level=None):
    self.model = model
    self.plan = model.coding_plan()
    self._params = params
    self._valid = np.asarray(valid, bool)
    n, length = self._valid.shape
    self._coded = np.broadcast_to(~self._valid[..., None],
                                  (n, length, model.latent_channels)).copy()
    # Without a level the state is asked for as before variable rate (kinds
    # that do not know rate_level still code at their one rate).
    self._state = (model.init_decode_state(self._valid) if rate_level is None else
                   model.init_decode_state(self._valid, np.full((n,), rate_level, np.float32)))
    self._step_fn = step_fn(model, config)
    self._pending = None

  def __len__(self) -> int:
    return len(self.plan)

  def __iter__(self):
    rows = np.arange(self._valid.shape[0])[:, None]
    for i, planned in enumerate(self.plan):
      if self._pending is not None:
        raise RuntimeError(f"Step {self._pending} was not fed its values.")
      cells, centers, pmf, mixture, self._state = self._step_fn(
          self._params, self._state, np.int32(i), self.model.step_shape(i))
      g = planned.size
      if cells.shape[1] != g:  # padded to share one compilation: keep the first g
        mixture = jax.tree.map(lambda t, g=g: t[:, :g], mixture)
      if planned.cells is not None:  # fixed plan: no need to fetch them
        cells = np.broadcast_to(planned.cells, (self._valid.shape[0], g))
      else:  # chosen by the model from its state (MT's entropy order)
        cells = np.asarray(cells)[:, :g]
      channels = slice(*planned.channels)
      todo = ~self._coded[rows, cells, channels]
      self._pending = i
      yield CodingStep(i, cells, channels, todo, np.asarray(centers)[:, :g],
                       np.asarray(pmf)[:, :g], mixture, self)

  def _feed(self, step: CodingStep, group: np.ndarray) -> None:
    if self._pending != step.index:
      raise RuntimeError(f"Step {step.index} fed out of order.")
    self._state = self.model.decode_update(self._state, step.index, step.cells, group)
    self._coded[step._rows, step.cells, step.channels] = True
    self._pending = None


@functools.lru_cache(maxsize=32)
def step_fn(model: base.EntropyModel, config):
  """The jitted (params, state, step, shape) -> (cells, centers, pmf, mixture,
  state) of a model and config: ``step`` a traced int32, ``shape`` the model's
  static ``step_shape(step)``. jax compiles once per (shape, batch size). The
  state is donated: its buffers (M2T's cache) are rewritten in place."""
  def step(params, state, i, shape):
    cells, mixture, state = model.apply({"params": params}, state, i, shape,
                                        method="decode_step")
    centers, pmf = tables.narrow_tables(mixture, config)
    return cells, centers, pmf, mixture, state
  return determinism.jit(step, static_argnums=3, donate_argnums=1)


@determinism.jit(static_argnums=2)
def element_bits(mixture: gmm.Mixture, values: jax.Array, prob_floor: float):
  """Bits (..., c) of ``values`` under ``mixture`` (the training formula)."""
  return gmm.bits(mixture, jnp.asarray(values, jnp.float32), prob_floor)
