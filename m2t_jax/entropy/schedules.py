"""Masking schedules: group sizes, location orders, M2T index maps.

Everything here is pure numpy and deterministic: a schedule is static data that
encoder, decoder and training share. Conventions:

* A grid of h x w token cells is flattened row-major: cell (r, c) -> r * w + c.
* An *order* is a permutation of all cells; a schedule cuts it into S groups of
  sizes g_1..g_S (``group_sizes``). Group i owns slots [o_i, o_i + g_i) of the
  order, o_i = g_1 + ... + g_{i-1}.
* M2T slot s has a *target* (the cell whose value it predicts: ``order[s]``) and an
  *input* (the cell whose value it reads, or -1 for the mask token).
"""

from typing import NamedTuple

import numpy as np

ORDERS = ("qlds", "random", "raster")

# The plastic number: the 2-D analogue of the golden ratio (Roberts' R2 sequence).
_PLASTIC = 1.32471795724474602596


def _validate(num_tokens: int, num_steps: int) -> None:
  if num_tokens < 1:
    raise ValueError(f"A schedule needs at least one token, got {num_tokens}.")
  if num_steps < 1:
    raise ValueError(f"A schedule needs at least one step, got {num_steps}.")
  if num_steps > num_tokens:
    raise ValueError(
        f"Impossible schedule: {num_steps} steps for {num_tokens} tokens (every "
        "group must hold at least one token); use fewer steps or larger patches.")


def group_sizes(num_tokens: int, num_steps: int, alpha: float) -> np.ndarray:
  """Sizes g_1..g_S of the power schedule, int64 array of shape (S,).

  The cumulative count after step i is round(L * (i/S)^alpha) (round half up), then
  raised where needed so that every group is non-empty and lowered so that the
  remaining groups still fit. For alpha >= 1 the sizes are sorted ascending:
  rounding a convex curve can make neighbouring sizes dip by one, and M2T needs
  g_{i-1} <= g_i to feed group i-1's values into group i's slots. For
  L=576, S=12, alpha=2.2 nothing changes: 2, 9, 16, 24, ... (cumulative 2, 11, 27, ...).
  """
  _validate(num_tokens, num_steps)
  if not alpha > 0:
    raise ValueError(f"Schedule exponent alpha must be > 0, got {alpha}.")
  steps = np.arange(1, num_steps + 1, dtype=np.float64)
  cumulative = np.floor(num_tokens * (steps / num_steps) ** alpha + 0.5).astype(np.int64)
  for i in range(num_steps):
    low = (cumulative[i - 1] if i else 0) + 1
    high = num_tokens - (num_steps - 1 - i)
    cumulative[i] = min(max(cumulative[i], low), high)
  sizes = np.diff(cumulative, prepend=0)
  if alpha >= 1:
    sizes = np.sort(sizes)
  return sizes


def group_offsets(sizes: np.ndarray) -> np.ndarray:
  """Slot offset o_i of each group: shape (S,), o_1 = 0."""
  return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def raster_order(h: int, w: int) -> np.ndarray:
  """Row-major order of the h x w cells: shape (h*w,)."""
  return np.arange(h * w, dtype=np.int64)


def random_order(h: int, w: int, seed: int = 0) -> np.ndarray:
  """A fixed-seed random permutation of the h x w cells: shape (h*w,)."""
  return np.random.default_rng(seed).permutation(h * w).astype(np.int64)


def qlds_order(h: int, w: int) -> np.ndarray:
  """Quasi-random low-discrepancy order (Roberts R2 sequence) of h x w cells.

  Point n is (frac(0.5 + n/g), frac(0.5 + n/g^2)) with g the plastic number; it is
  mapped to cell (floor(u1 * h), floor(u2 * w)) [inferred: floor keeps every cell's
  share of the unit square equal], cells already taken are skipped until every
  cell is ordered. Returns shape (h*w,).
  """
  num = h * w
  a1, a2 = 1.0 / _PLASTIC, 1.0 / _PLASTIC**2
  taken = np.zeros(num, dtype=bool)
  order = []
  start = 0
  chunk = max(4 * num, 64)
  # The R2 sequence is equidistributed, so every cell is hit; the bound only
  # guards against an infinite loop on float corner cases.
  while len(order) < num and start < 10_000 * num:
    n = np.arange(start, start + chunk, dtype=np.float64)
    rows = np.minimum(np.floor(np.mod(0.5 + n * a1, 1.0) * h), h - 1).astype(np.int64)
    cols = np.minimum(np.floor(np.mod(0.5 + n * a2, 1.0) * w), w - 1).astype(np.int64)
    for cell in rows * w + cols:
      if not taken[cell]:
        taken[cell] = True
        order.append(cell)
    start += chunk
  if len(order) < num:  # pragma: no cover - not reached for grids up to 1000x1000
    order.extend(np.flatnonzero(~taken).tolist())
  return np.asarray(order, dtype=np.int64)


def location_order(kind: str, h: int, w: int, seed: int = 0) -> np.ndarray:
  """The order named ``kind`` ('qlds', 'random', 'raster') of an h x w grid."""
  if kind == "qlds":
    return qlds_order(h, w)
  if kind == "random":
    return random_order(h, w, seed)
  if kind == "raster":
    return raster_order(h, w)
  if kind == "entropy":
    raise ValueError("The 'entropy' order is instance-adaptive: it exists only for "
                     "MT decoding (m2t_jax.entropy.mt), not as a fixed permutation.")
  raise ValueError(f"Unknown order {kind!r}: expected one of {ORDERS} or 'entropy'.")


def group_ids(sizes: np.ndarray) -> np.ndarray:
  """Group index of every slot: shape (L,), values 0..S-1."""
  return np.repeat(np.arange(len(sizes)), sizes)


class M2TIndexMaps(NamedTuple):
  """Static index maps of an M2T schedule; all arrays have shape (L,) unless said.

  input_index[s]: cell whose value slot s reads, or -1 for the mask token.
  target_index[s]: cell whose value slot s predicts (= the order).
  group[s]: group of slot s.
  sizes, offsets: shape (S,).
  """
  input_index: np.ndarray
  target_index: np.ndarray
  group: np.ndarray
  sizes: np.ndarray
  offsets: np.ndarray


def m2t_index_maps(order: np.ndarray, sizes: np.ndarray) -> M2TIndexMaps:
  """M2T slots for ``order`` cut into groups of ``sizes``.

  Group i's slots read the values of group i-1's cells (in order), then mask
  tokens up to g_i slots; group 1 reads only mask tokens. Requires g_{i-1} <= g_i.
  """
  order = np.asarray(order, dtype=np.int64)
  sizes = np.asarray(sizes, dtype=np.int64)
  if sizes.sum() != len(order) or np.any(sizes < 1):
    raise ValueError(f"Group sizes {sizes.tolist()} do not partition {len(order)} tokens.")
  if np.any(np.diff(sizes) < 0):
    raise ValueError(
        f"M2T needs non-decreasing group sizes (group i-1's values are fed into group "
        f"i's slots), got {sizes.tolist()}; use alpha >= 1.")
  offsets = group_offsets(sizes)
  input_index = np.full(len(order), -1, dtype=np.int64)
  for i in range(1, len(sizes)):
    prev = order[offsets[i - 1]:offsets[i - 1] + sizes[i - 1]]
    input_index[offsets[i]:offsets[i] + len(prev)] = prev
  return M2TIndexMaps(input_index, order.copy(), group_ids(sizes), sizes, offsets)


def block_triangular_mask(sizes: np.ndarray) -> np.ndarray:
  """Attention mask of M2T: mask[q, k] is True when slot q may attend to slot k,
  i.e. group(k) <= group(q). Shape (L, L), bool."""
  g = group_ids(np.asarray(sizes))
  return g[None, :] <= g[:, None]


class Schedule(NamedTuple):
  """A fixed schedule of one patch: ``order`` (L,), ``sizes`` and ``offsets`` (S,)."""
  order: np.ndarray
  sizes: np.ndarray
  offsets: np.ndarray

  @property
  def num_steps(self) -> int:
    return len(self.sizes)

  def group(self, i: int) -> np.ndarray:
    """Cells coded at step i (0-based): shape (g_i,)."""
    return self.order[self.offsets[i]:self.offsets[i] + self.sizes[i]]


def make_schedule(patch_size: int, num_steps: int, alpha: float, order: str,
                  seed: int = 0) -> Schedule:
  """The fixed schedule of a w_T x w_T patch."""
  sizes = group_sizes(patch_size * patch_size, num_steps, alpha)
  perm = location_order(order, patch_size, patch_size, seed)
  return Schedule(perm, sizes, group_offsets(sizes))
