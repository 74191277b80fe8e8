"""Schedules: group sizes, orders, M2T index maps and masks."""

import numpy as np
import pytest

from m2t_jax.entropy import schedules


def test_power_group_sizes_golden():
  # SPEC §6: cumulative round(576 * (i/12)^2.2), round half up.
  sizes = schedules.group_sizes(576, 12, 2.2)
  np.testing.assert_array_equal(
      np.cumsum(sizes), [2, 11, 27, 51, 84, 125, 176, 236, 306, 386, 476, 576])


def test_group_sizes_partition_and_are_nonempty():
  for num_tokens, steps, alpha in [(16, 4, 2.2), (576, 2, 1.0), (256, 8, 3.0),
                                   (5, 5, 4.0), (1, 1, 2.2), (100, 7, 1.5), (10, 10, 0.5)]:
    sizes = schedules.group_sizes(num_tokens, steps, alpha)
    assert sizes.sum() == num_tokens and len(sizes) == steps
    assert np.all(sizes >= 1)
    if alpha >= 1:
      assert np.all(np.diff(sizes) >= 0)


def test_alpha_one_gives_equal_groups():
  np.testing.assert_array_equal(schedules.group_sizes(576, 12, 1.0), [48] * 12)


def test_impossible_schedules_raise():
  with pytest.raises(ValueError, match="Impossible schedule"):
    schedules.group_sizes(16, 17, 2.2)
  with pytest.raises(ValueError, match="at least one step"):
    schedules.group_sizes(16, 0, 2.2)
  with pytest.raises(ValueError, match="alpha"):
    schedules.group_sizes(16, 4, 0.0)
  with pytest.raises(ValueError, match="Unknown order"):
    schedules.location_order("spiral", 4, 4)
  with pytest.raises(ValueError, match="MT"):
    schedules.location_order("entropy", 4, 4)


@pytest.mark.parametrize("h,w", [(24, 24), (1, 1), (1, 7), (5, 3), (16, 16), (13, 29)])
@pytest.mark.parametrize("kind", ["qlds", "random", "raster"])
def test_orders_are_permutations(kind, h, w):
  order = schedules.location_order(kind, h, w, seed=3)
  np.testing.assert_array_equal(np.sort(order), np.arange(h * w))


def test_orders_are_deterministic():
  np.testing.assert_array_equal(schedules.qlds_order(24, 24), schedules.qlds_order(24, 24))
  np.testing.assert_array_equal(schedules.random_order(8, 8, 5),
                                schedules.random_order(8, 8, 5))
  assert not np.array_equal(schedules.random_order(8, 8, 5), schedules.random_order(8, 8, 6))


_PLASTIC = 1.32471795724474602596  # g, the real root of g^3 = g + 1


def _r2_cell(n, h, w):
  """SPEC §6: point n of Roberts' R2 sequence, (frac(0.5 + n a1), frac(0.5 + n a2))
  with a1 = 1/g, a2 = 1/g^2, the first coordinate scaled to the rows and the
  second to the columns, floored; returns its row-major cell."""
  u1 = (0.5 + n * (1.0 / _PLASTIC)) % 1.0
  u2 = (0.5 + n * (1.0 / (_PLASTIC * _PLASTIC))) % 1.0
  return int(u1 * h) * w + int(u2 * w)


def _r2_order_reference(h, w):
  """The QLDS order written out plainly: walk the sequence, skip cells already
  taken. Returns the order and the number of points walked (more than h*w when
  some points landed on a taken cell)."""
  taken = set()
  order = []
  n = 0
  while len(order) < h * w:
    cell = _r2_cell(n, h, w)
    if cell not in taken:
      taken.add(cell)
      order.append(cell)
    n += 1
  return order, n


def test_plastic_number_constant():
  assert abs(_PLASTIC**3 - _PLASTIC - 1) < 1e-12


@pytest.mark.parametrize("h,w", [(24, 24), (16, 16), (4, 4), (5, 3), (13, 29), (1, 7),
                                 (7, 1)])
def test_qlds_order_is_the_r2_walk(h, w):
  np.testing.assert_array_equal(schedules.qlds_order(h, w), _r2_order_reference(h, w)[0])


@pytest.mark.parametrize("h,w", [(24, 24), (16, 16), (4, 4), (5, 3), (13, 29), (7, 1)])
def test_r2_walk_skips_taken_cells(h, w):
  # Makes the comparison above non-vacuous: on these grids points collide, so an
  # order without the skip (or with a different skip rule) would differ.
  assert _r2_order_reference(h, w)[1] > h * w


def test_qlds_skips_inside_the_first_groups_on_24x24():
  # On the paper's 24x24 grid the first collision comes early (not only when the
  # last free cells are hunted down): the order must skip there and go on with
  # the next point, exactly as the plain walk does.
  raw = [_r2_cell(n, 24, 24) for n in range(576)]
  first_repeat = next(n for n in range(576) if raw[n] in raw[:n])
  assert first_repeat < 576 // 2
  order = schedules.qlds_order(24, 24)
  np.testing.assert_array_equal(order[:first_repeat], raw[:first_repeat])
  assert order[first_repeat] != raw[first_repeat]  # the taken cell was skipped
  assert order[first_repeat] == next(c for c in raw[first_repeat:] if c not in raw[:first_repeat])


def _mean_nn_distance(cells, w):
  pts = np.stack([cells // w, cells % w], -1).astype(float)
  d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  return d.min(1).mean()


def test_qlds_groups_are_spread_out():
  sizes = schedules.group_sizes(576, 12, 2.2)
  offsets = schedules.group_offsets(sizes)
  qlds = schedules.qlds_order(24, 24)
  for i in range(1, 8):  # groups with >= 9 tokens but not nearly the whole grid
    group = qlds[offsets[i]:offsets[i] + sizes[i]]
    random_means = [
        _mean_nn_distance(schedules.random_order(24, 24, s)[:sizes[i]], 24)
        for s in range(20)]
    assert _mean_nn_distance(group, 24) > np.mean(random_means), i


def test_m2t_index_maps():
  order = schedules.qlds_order(4, 4)
  sizes = schedules.group_sizes(16, 4, 2.2)  # 1, 2, 5, 8
  maps = schedules.m2t_index_maps(order, sizes)
  offsets = schedules.group_offsets(sizes)
  np.testing.assert_array_equal(maps.target_index, order)
  assert np.all(maps.input_index[:sizes[0]] == -1)  # group 1 reads only masks
  for i in range(1, len(sizes)):
    slots = maps.input_index[offsets[i]:offsets[i] + sizes[i]]
    prev = order[offsets[i - 1]:offsets[i - 1] + sizes[i - 1]]
    np.testing.assert_array_equal(slots[:sizes[i - 1]], prev)
    assert np.all(slots[sizes[i - 1]:] == -1)
  # Every cell except those of the last group is read exactly once.
  real = maps.input_index[maps.input_index >= 0]
  np.testing.assert_array_equal(np.sort(real), np.sort(order[:offsets[-1]]))
  np.testing.assert_array_equal(maps.group, np.repeat(np.arange(4), sizes))


def test_m2t_index_maps_refuse_decreasing_sizes():
  with pytest.raises(ValueError, match="non-decreasing"):
    schedules.m2t_index_maps(np.arange(6), np.array([3, 2, 1]))
  with pytest.raises(ValueError, match="partition"):
    schedules.m2t_index_maps(np.arange(6), np.array([1, 2]))


def test_block_triangular_mask():
  mask = schedules.block_triangular_mask(np.array([1, 2, 3]))
  expected = np.array([
      [1, 0, 0, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 1, 1, 1],
      [1, 1, 1, 1, 1, 1],
      [1, 1, 1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_array_equal(schedules.block_triangular_mask(np.ones(5, int)),
                                np.tril(np.ones((5, 5), bool)))
