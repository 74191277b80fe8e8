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


def test_qlds_starts_like_the_r2_sequence():
  # Independent recomputation of the first points of Roberts' R2 sequence.
  g = 1.32471795724474602596
  for n in range(3):
    r = int(((0.5 + n / g) % 1.0) * 24)
    c = int(((0.5 + n / g**2) % 1.0) * 24)
    assert schedules.qlds_order(24, 24)[n] == r * 24 + c


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
