"""The spatial-channel groups of GroupedMixer (docs/architecture.md): pure numpy.

A patch of L = w_T^2 cells and C channels is cut into

* k_c **channel slices** of widths ``slices`` (equal, or uneven as in ELIC), and
* k_s **spatial subsets** of the cells. Every subset has the same number Q = L/k_s
  of cells, one in each of Q **blocks** (small tiles of the patch), so that the
  tokens of a patch form a (group, block) grid: that is what lets the cross-group
  mixer attend "at the same location" over the groups of one block only.

Group i = (slice c, subset s): slice c's channels at subset s's cells, G = k_c *
k_s groups of Q x w_c elements, coded channel-slice-major (``order``
'slice_major': i = c * k_s + s, every subset of a slice before the next slice)
or 'subset_major' (i = s * k_c + c, every slice of a subset before the next).

Spatial subsets (``spatial``):

* ``"phases"``: blocks of bh x bw cells (``block``), subset s = the cells at the
  s-th offset of a block, the offsets ordered by ``phase_order`` ('qlds' |
  'raster' | 'random', as ``schedules.location_order`` of a bh x bw grid). A 2x2
  block in QLDS order gives the four interleave phases (1,1), (0,0), (0,1), (1,0):
  the diagonal first, so each later phase has decoded neighbours on two sides.
* ``"checkerboard"``: k_s = 2, blocks are horizontal pairs of cells (one of each
  colour), the cells with even row + column first (the anchors).
* ``"none"``: k_s = 1, every cell is its own block (channel-only grouping).

Cells are row-major (cell (r, c) -> r * w_T + c); blocks are row-major over the
grid of blocks.
"""

import dataclasses

import numpy as np

from m2t_jax.entropy import schedules

SPATIAL = ("phases", "checkerboard", "none")
ORDERS = ("slice_major", "subset_major")


@dataclasses.dataclass(frozen=True)
class Grouping:
  """The groups of one patch.

  slices: (k_c,) channel widths, summing to C.
  subsets: int64 (k_s, Q): subsets[s, q] is the cell of subset s in block q.
  order: 'slice_major' or 'subset_major' (module docstring).
  """
  slices: tuple[int, ...]
  subsets: np.ndarray
  order: str = "slice_major"

  @property
  def num_slices(self) -> int:
    return len(self.slices)

  @property
  def num_subsets(self) -> int:
    return self.subsets.shape[0]

  @property
  def num_blocks(self) -> int:
    """Q: tokens per group (cells per subset), one per block."""
    return self.subsets.shape[1]

  @property
  def num_groups(self) -> int:
    return self.num_slices * self.num_subsets

  def slice_of(self, group: int) -> int:
    if self.order == "slice_major":
      return group // self.num_subsets
    return group % self.num_slices

  def subset_of(self, group: int) -> int:
    if self.order == "slice_major":
      return group % self.num_subsets
    return group // self.num_slices

  def groups_of_slice(self, slice_index: int) -> np.ndarray:
    """The groups of a channel slice, ascending (one per subset)."""
    return np.array([g for g in range(self.num_groups) if self.slice_of(g) == slice_index])

  def channels(self, slice_index: int) -> tuple[int, int]:
    """(start, stop) of a channel slice."""
    start = int(sum(self.slices[:slice_index]))
    return start, start + self.slices[slice_index]

  def cells(self, group: int) -> np.ndarray:
    """(Q,) cells of a group, in block order (the order of its tokens)."""
    return self.subsets[self.subset_of(group)]

  def cells_of_slice(self, slice_index: int) -> np.ndarray:
    """(L,) the cells of the groups of a slice, in group then block order: a
    permutation of the patch's cells."""
    return np.concatenate([self.cells(g) for g in self.groups_of_slice(slice_index)])


def split_channels(channels: int, slices) -> tuple[int, ...]:
  """Slice widths: ``slices`` as given (a sequence of widths summing to C), or
  an int k_c for k_c equal slices. Raises ValueError otherwise."""
  if isinstance(slices, int | np.integer):
    if not 1 <= slices <= channels or channels % slices:
      raise ValueError(f"Cannot cut {channels} channels into {slices} equal slices.")
    return (channels // int(slices),) * int(slices)
  widths = tuple(int(w) for w in slices)
  if not widths or min(widths) < 1 or sum(widths) != channels:
    raise ValueError(f"Channel slices {list(widths)} must be positive widths summing "
                     f"to latent_channels={channels}.")
  return widths


def spatial_subsets(patch_size: int, spatial: str, block=(2, 2),
                    phase_order: str = "qlds", seed: int = 0) -> np.ndarray:
  """int64 (k_s, Q): the cells of each subset, one per block (module docstring)."""
  p = patch_size
  if spatial == "none":
    return np.arange(p * p, dtype=np.int64)[None]
  if spatial == "checkerboard":
    if p % 2:
      raise ValueError(f"A checkerboard needs an even patch_size, got {p}.")
    rows, pairs = np.meshgrid(np.arange(p), np.arange(p // 2), indexing="ij")
    rows, pairs = rows.reshape(-1), pairs.reshape(-1)
    anchor = rows * p + 2 * pairs + rows % 2  # (row + column) even
    other = rows * p + 2 * pairs + 1 - rows % 2
    return np.stack([anchor, other]).astype(np.int64)
  if spatial == "phases":
    bh, bw = (int(b) for b in block)
    if bh < 1 or bw < 1 or p % bh or p % bw or bh * bw == 1:
      raise ValueError(f"Phase blocks {bh}x{bw} must tile patch_size={p} and hold "
                       "at least two cells.")
    phases = schedules.location_order(phase_order, bh, bw, seed)
    br, bc = np.meshgrid(np.arange(p // bh), np.arange(p // bw), indexing="ij")
    br, bc = br.reshape(-1), bc.reshape(-1)
    return np.stack([(br * bh + ph // bw) * p + bc * bw + ph % bw
                     for ph in phases]).astype(np.int64)
  raise ValueError(f"Unknown spatial grouping {spatial!r}: expected one of {SPATIAL}.")


def make_grouping(patch_size: int, channels: int, slices, spatial: str,
                  block=(2, 2), phase_order: str = "qlds", seed: int = 0,
                  order: str = "slice_major") -> Grouping:
  """The Grouping of a w_T x w_T patch with C channels (ValueError if impossible)."""
  if order not in ORDERS:
    raise ValueError(f"Unknown group order {order!r}: expected one of {ORDERS}.")
  return Grouping(split_channels(channels, slices),
                  spatial_subsets(patch_size, spatial, block, phase_order, seed), order)


def cross_group_mask(groups: Grouping, scope: str) -> np.ndarray:
  """bool (G, G): mask[i, j] when the cross-group mixer lets token (i, q) attend to
  token (j, q) of the same block q. Token j holds the values of group j-1.

  scope 'block': every j <= i (the whole block: the "same 2x2 cell").
  scope 'cell': j = i, and the j < i whose input values lie at token i's own
  cell (subset of group j-1 = subset of group i): the "same spatial location".
  """
  g = groups.num_groups
  causal = np.tril(np.ones((g, g), bool))
  if scope == "block":
    return causal
  if scope == "cell":
    subset = np.array([groups.subset_of(i) for i in range(g)])
    same = np.zeros((g, g), bool)
    same[:, 1:] = subset[:, None] == subset[None, :-1]  # input of j: group j-1
    return causal & (same | np.eye(g, dtype=bool))
  raise ValueError(f"Unknown cross-group scope {scope!r}: expected 'block' or 'cell'.")
