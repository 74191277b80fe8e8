"""Decode steps of MT and M2T as explicit state machines, shared by encoder and decoder.

A stepper turns "what is known so far" into the coding tables of the next group.
The encoder and the decoder drive the very same stepper with the very same inputs
(the encoder feeds the true values of each group, the decoder the values it has
just decoded, which are equal), so both compute bit-identical tables: this is
the invariant that range decoding needs (DESIGN.md). Table building runs inside
the same jitted function as the model step, so nothing is recomputed on another
path or device.

All patches of an image are one batch: N patches of L tokens with C channels.
``predict(i)`` returns, for step i:
  cells   int (N, g)  cell (token) index of each predicted token in its patch,
  centers int32 (N, g, C), pmf float32 (N, g, C, 2r+2)   (gmm.coding_tables at
                                                          the narrow radius r),
  mixture  gmm.Mixture with fields (N, g, C, K)           (for rate estimates).
``update(i, cells, values)`` feeds the group's values (N, g, C) back.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax.entropy import gmm, mt
from m2t_jax.entropy.m2t import M2T


def narrow_radius(config) -> int:
  """Radius of the tables every element gets first (``gmm.narrow_radius``; the
  full ``gmm.table_radius`` when two widths are off). Configs saved before the
  two widths existed have no narrow_radius: one width."""
  r, wide = config.gmm.get("narrow_radius", 0), config.gmm.table_radius
  return r if 0 < r < wide else wide


def _tables(mixture, config):
  return gmm.coding_tables(mixture, narrow_radius(config), config.gmm.prob_floor)


def wide_elements(pmf: np.ndarray, todo: np.ndarray, config) -> np.ndarray:
  """Which elements to code with a wide table: bool, the shape of ``todo``.

  pmf: narrow tables (..., 2r+2) from a step; todo: bool (...) elements to code.
  Decided from the narrow escape mass, which encoder and decoder hold
  bit-identically, so both pick the same elements.
  """
  if narrow_radius(config) == config.gmm.table_radius:
    return np.zeros(todo.shape, bool)
  return todo & (pmf[..., -1] > config.gmm.wide_threshold)


def wide_tables(mixture, flat_index: np.ndarray, config) -> np.ndarray:
  """Wide (radius ``gmm.table_radius``) tables of some elements of a step's mixture.

  mixture: a step's ``gmm.Mixture`` with fields (..., K), on device;
  flat_index: (M,) indices into the mixture's elements in C order.
  Returns float32 (M, 2R+2). The elements go in chunks of a fixed size (the last
  one padded), so the number of wide elements, which differs from image to
  image, never triggers a compile: one per step shape, like the step itself.
  """
  m = int(flat_index.shape[0])
  padded = np.zeros(-(-m // _WIDE_CHUNK) * _WIDE_CHUNK, np.int32)
  padded[:m] = flat_index
  fn = _wide_fn(config)
  chunks = [fn(mixture, padded[i:i + _WIDE_CHUNK]) for i in range(0, len(padded), _WIDE_CHUNK)]
  return np.concatenate([np.asarray(c) for c in chunks])[:m]


# Wide elements per call: small enough that padding the last chunk costs little
# (a trained model has few wide elements), large enough for few calls otherwise.
_WIDE_CHUNK = 1024


@functools.lru_cache(maxsize=32)
def _wide_fn(config):
  def tables(mixture, index):
    flat = jax.tree_util.tree_map(lambda t: t.reshape(-1, t.shape[-1])[index], mixture)
    return gmm.coding_tables(flat, config.gmm.table_radius, config.gmm.prob_floor)[1]
  return jax.jit(tables)


class M2TStepper:
  """Cached M2T decoding: step i feeds group i-1's values, reads group i's tables."""

  def __init__(self, entropy_model: M2T, params, config, num_patches: int):
    self._model = entropy_model
    self._params = params
    self._config = config
    self._schedule = entropy_model.schedule
    self._cache = entropy_model.init_cache(num_patches)
    self._prev = jnp.zeros((num_patches, 0, config.latent_channels), jnp.float32)
    self._num_patches = num_patches
    self._step = _m2t_step_fn(entropy_model, config)

  @property
  def num_steps(self) -> int:
    return self._schedule.num_steps

  def predict(self, i: int):
    centers, pmf, mixture, self._cache = self._step(self._params, self._prev, self._cache, i)
    group = self._schedule.group(i)
    cells = np.broadcast_to(group, (self._num_patches, len(group)))
    return cells, centers, pmf, mixture

  def update(self, i: int, cells, values) -> None:
    del i, cells
    self._prev = jnp.asarray(values, jnp.float32)


@functools.lru_cache(maxsize=32)
def _m2t_step_fn(entropy_model, config):
  # One jitted function per (model, config); jax caches one compile per (step,
  # batch size). The cache argument is donated: its buffers are rewritten in place.
  def step(params, prev, cache, i):
    mixture, cache = entropy_model.apply({"params": params}, prev, cache, i, method=M2T.step)
    centers, pmf = _tables(mixture, config)
    return centers, pmf, mixture, cache
  return jax.jit(step, static_argnums=3, donate_argnums=2)


class MTStepper:
  """MT decoding: S full passes; fixed groups or the entropy-adaptive order.

  One jitted function serves every step: it takes the cells to predict as an
  array padded to the largest group (N, g_S), so MT compiles once per batch
  size instead of once per step; the host keeps the first g_i columns.
  """

  def __init__(self, entropy_model: mt.MT, params, config, num_patches: int, valid):
    self._params = params
    self._adaptive = entropy_model.order == "entropy"
    self._sizes = entropy_model.group_sizes
    self._schedule = None if self._adaptive else entropy_model.schedule
    length, c = entropy_model.num_tokens, config.latent_channels
    self._tokens = jnp.zeros((num_patches, length, c), jnp.float32)
    # Padded cells are known from the start (zeros); they are never coded.
    self._known = ~jnp.asarray(valid)
    self._fixed_fn, self._adaptive_fn = _mt_step_fns(entropy_model, config)

  @property
  def num_steps(self) -> int:
    return len(self._sizes)

  def predict(self, i: int):
    g, g_max = int(self._sizes[i]), int(self._sizes.max())
    n = self._tokens.shape[0]
    if self._adaptive:
      cells, centers, pmf, mixture = self._adaptive_fn(self._params, self._tokens,
                                                       self._known, g_max)
      cells = np.asarray(cells)
    else:
      group = self._schedule.group(i)
      padded = np.broadcast_to(np.pad(group, (0, g_max - g), mode="edge"), (n, g_max))
      cells = np.ascontiguousarray(padded, dtype=np.int32)
      centers, pmf, mixture = self._fixed_fn(self._params, self._tokens, self._known, cells)
    first = lambda t: t[:, :g]
    return (cells[:, :g], first(centers), first(pmf),
            jax.tree_util.tree_map(first, mixture))

  def update(self, i: int, cells, values) -> None:
    del i
    rows = np.arange(cells.shape[0])[:, None]
    self._tokens = self._tokens.at[rows, cells].set(jnp.asarray(values, jnp.float32))
    self._known = self._known.at[rows, cells].set(True)


def _take_cells(t, cells):
  """t (N, L, ...) gathered at cells (N, g) -> (N, g, ...)."""
  return jnp.take_along_axis(t, cells.reshape(cells.shape + (1,) * (t.ndim - 2)), axis=1)


@functools.lru_cache(maxsize=32)
def _mt_step_fns(entropy_model, config):
  def fixed(params, tokens, known, cells):
    mixture = entropy_model.apply({"params": params}, tokens, known)
    mixture = jax.tree_util.tree_map(lambda t: _take_cells(t, cells), mixture)
    centers, pmf = _tables(mixture, config)
    return centers, pmf, mixture

  def adaptive(params, tokens, known, size):
    mixture = entropy_model.apply({"params": params}, tokens, known)
    centers, pmf = _tables(mixture, config)
    # Rank tokens by the entropy of their full-width tables: a narrow table
    # lumps the tail into its escape and would make wide tokens look certain.
    _, full = gmm.coding_tables(mixture, config.gmm.table_radius, config.gmm.prob_floor)
    entropy = jnp.sum(gmm.table_entropy_bits(full), axis=-1)  # bits per token
    cells = mt.select_lowest_entropy(entropy, known, size)
    take = lambda t: _take_cells(t, cells)
    return cells, take(centers), take(pmf), jax.tree_util.tree_map(take, mixture)

  return jax.jit(fixed), jax.jit(adaptive, static_argnums=3)


def make_stepper(entropy_model, params, config, num_patches: int, valid):
  """The stepper of ``config.model``; ``params`` are the entropy model's."""
  if config.model == "m2t":
    return M2TStepper(entropy_model, params, config, num_patches)
  return MTStepper(entropy_model, params, config, num_patches, valid)
