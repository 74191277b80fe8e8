"""Coding tables in two widths, decided identically by encoder and decoder.

Every element first gets a narrow table (radius r = ``gmm.narrow_radius``) from
the step itself; the few elements whose narrow escape mass exceeds
``gmm.wide_threshold`` are coded with a wide table (radius R = ``gmm.table_radius``)
instead, as a second batch of the step. The choice depends only on the narrow
tables, which both sides hold bit-identically, so both pick the same elements.

Shapes: a table is float32 (..., 2r+2) (``gmm.coding_tables``: 2r+1 window
entries around an int32 centre, then the escape), probabilities summing to 1.
"""

import functools

import jax
import numpy as np

from m2t_jax.coding import determinism
from m2t_jax.entropy import gmm

# Wide elements per call: small enough that padding the last chunk costs little
# (a trained model has few wide elements), large enough for few calls otherwise.
WIDE_CHUNK = 1024


def narrow_radius(config) -> int:
  """Radius of the tables every element gets first (``gmm.narrow_radius``; the
  full ``gmm.table_radius`` when two widths are off). Configs saved before the
  two widths existed have no narrow_radius: one width."""
  r, wide = config.gmm.get("narrow_radius", 0), config.gmm.table_radius
  return r if 0 < r < wide else wide


def narrow_tables(mixture: gmm.Mixture, config):
  """(centers int32 (...), pmf float32 (..., 2r+2)) of a mixture with fields (..., K)."""
  return gmm.coding_tables(mixture, narrow_radius(config), config.gmm.prob_floor)


def wide_elements(pmf: np.ndarray, todo: np.ndarray, config) -> np.ndarray:
  """Which elements to code with a wide table: bool, the shape of ``todo``.

  pmf: narrow tables (..., 2r+2) from a step; todo: bool (...) elements to code.
  """
  if narrow_radius(config) == config.gmm.table_radius:
    return np.zeros(todo.shape, bool)
  return todo & (pmf[..., -1] > config.gmm.wide_threshold)


def wide_tables(mixture: gmm.Mixture, flat_index: np.ndarray, config) -> np.ndarray:
  """Wide (radius ``gmm.table_radius``) tables of some elements of a step's mixture.

  mixture: a step's ``gmm.Mixture`` with fields (..., K), on device;
  flat_index: (M,) indices into the mixture's elements in C order.
  Returns float32 (M, 2R+2). The elements are gathered first (a cheap op per
  shape) and their tables built in chunks of a fixed size (the last one padded),
  so neither the number of wide elements nor the step's shape triggers a compile
  of the table function: one per config. (Gathering inside it compiled the erfc
  tables anew for every step shape of every image size: ~5 s each on 2 cores.)
  """
  m = int(flat_index.shape[0])
  padded = np.zeros(-(-m // WIDE_CHUNK) * WIDE_CHUNK, np.int32)
  padded[:m] = flat_index
  flat = jax.tree.map(lambda t: t.reshape(-1, t.shape[-1]), mixture)
  fn = wide_fn(config)
  chunks = [fn(jax.tree.map(lambda t, i=i: t[padded[i:i + WIDE_CHUNK]], flat))
            for i in range(0, len(padded), WIDE_CHUNK)]
  return np.concatenate([np.asarray(c) for c in chunks])[:m]


@functools.lru_cache(maxsize=32)
def wide_fn(config):
  """The jitted Mixture with fields (WIDE_CHUNK, K) -> wide tables of a config."""
  def tables(flat):
    return gmm.coding_tables(flat, config.gmm.table_radius, config.gmm.prob_floor)[1]
  return determinism.jit(tables)
