"""GroupedMixer: the groups, cached decoding equals teacher forcing, causality,
what each mixer sees, exact round trips, training.

Two models: the ``tiny`` config (2 equal slices x checkerboard = 4 groups) and
UNEVEN (slices 1, 2, 5 x the four 2x2 phases = 12 groups), both on 4x4 patches
with C = 8.
"""

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2t_jax import Codec, get_config, train
from m2t_jax.app.demo import sample_images
from m2t_jax.coding import bitstream
from m2t_jax.entropy import base, gmm, grouping, registry
from m2t_jax.entropy.grouped import GroupedMixer

C = 8
UNEVEN = dict(latent_channels=C, patch_size=4, d_model=32, num_layers=2, num_heads=2,
              mlp_dim=64, channel_slices=(1, 2, 5), spatial="phases")


def _tokens(model, batch=3, seed=0):
  x = jax.random.normal(jax.random.key(seed), (batch, model.num_tokens, C)) * 4
  return jnp.round(x)


def _init(model, seed=1):
  tokens = _tokens(model)
  return jax.jit(lambda k: model.init(k, tokens, tokens, method="rate"))(
      jax.random.key(seed))


@pytest.fixture(scope="module")
def models():
  """name -> (model, params)."""
  tiny = registry.build(get_config("grouped", "tiny"))
  out = {"tiny": tiny, "uneven": GroupedMixer(**UNEVEN)}
  return {name: (m, _init(m)) for name, m in out.items()}


# --------------------------------------------------------------------------- #
# The groups (numpy).
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("spatial,block,k_s", [
    ("phases", (2, 2), 4), ("phases", (1, 3), 3), ("checkerboard", None, 2),
    ("none", None, 1)])
def test_subsets_tile_the_patch(spatial, block, k_s):
  p = 6
  subsets = grouping.spatial_subsets(p, spatial, block or (2, 2))
  assert subsets.shape == (k_s, p * p // k_s)
  np.testing.assert_array_equal(np.sort(subsets.reshape(-1)), np.arange(p * p))
  rows, cols = np.divmod(subsets, p)  # (k_s, Q): the cells of each block (a column)
  if spatial == "phases":  # a block is one bh x bw tile, one cell per phase
    bh, bw = block
    assert np.all(rows // bh == rows[:1] // bh) and np.all(cols // bw == cols[:1] // bw)
    assert len({(r % bh, c % bw) for r, c in zip(rows[:, 0], cols[:, 0], strict=True)}) == k_s
  if spatial == "checkerboard":  # anchors first, each paired with its right/left
    np.testing.assert_array_equal((rows + cols) % 2, [[0], [1]] * np.ones_like(rows))
    assert np.all(rows[0] == rows[1]) and np.all(np.abs(cols[0] - cols[1]) == 1)


def test_qlds_phases_start_on_the_diagonal():
  # R2 points 0..3 on a 2x2 grid fall in cells (1,1), (0,0), (0,1), (1,0) (worked
  # out by hand from frac(0.5 + n/g), frac(0.5 + n/g^2), g the plastic number).
  subsets = grouping.spatial_subsets(4, "phases", (2, 2), "qlds")
  np.testing.assert_array_equal(subsets[:, 0], [5, 0, 1, 4])


@pytest.mark.parametrize("slices, message", [
    ((3, 4), "summing to latent_channels=8"), ((0, 8), "positive widths")])
def test_impossible_slices_are_refused(slices, message):
  with pytest.raises(ValueError, match="into 3 equal slices"):
    grouping.split_channels(8, 3)
  assert grouping.split_channels(8, 4) == (2, 2, 2, 2)
  config = get_config("grouped", "tiny")
  config.grouped.channel_slices = slices
  with pytest.raises(ValueError, match=message):
    registry.get("grouped").model.validate_config(config)


@pytest.mark.parametrize("size", ["tiny", "small", "paper"])
def test_plan_is_channel_slice_major_and_covers_every_element(size):
  config = get_config("grouped", size)
  model = registry.build(config)
  plan = model.coding_plan()
  base.check_plan(plan, model.num_tokens, config.latent_channels)
  groups = model.grouping
  assert len(plan) == groups.num_slices * groups.num_subsets == config.schedule.num_steps
  starts = [step.channels[0] for step in plan]
  assert starts == sorted(starts)  # every subset of a slice before the next slice
  with pytest.raises(ValueError):
    base.check_plan(plan[1:], model.num_tokens, config.latent_channels)


# --------------------------------------------------------------------------- #
# The model.
# --------------------------------------------------------------------------- #


def _decode_bits(model, params, tokens):
  """Per-element bits (N, L, C) from the cached decode steps of the interface
  (init_decode_state, decode_step, decode_update), fed the true values; one jit
  around the whole loop (each step still runs on its own static cache slice)."""
  plan = model.coding_plan()

  @jax.jit
  def run(params, tokens):
    state = model.init_decode_state(np.ones(tokens.shape[:2], bool))
    bits = jnp.zeros(tokens.shape)
    for i, step in enumerate(plan):
      cells, mixture, state = model.apply(params, state, i, method="decode_step")
      values = tokens[:, step.cells, slice(*step.channels)]
      bits = bits.at[:, step.cells, slice(*step.channels)].set(
          gmm.bits(mixture, values, model.prob_floor))
      state = model.decode_update(state, i, cells, values)
    return bits
  return np.asarray(run(params, tokens))


@pytest.mark.parametrize("name", ["tiny", "uneven"])
def test_cached_decode_matches_teacher_forcing(models, name):
  model, params = models[name]
  tokens = _tokens(model)
  teacher = np.asarray(model.apply(params, tokens, tokens, method="rate").bits)
  cached = _decode_bits(model, params, tokens)
  diff = np.abs(cached - teacher).max()
  print(f"{name}: {len(model.coding_plan())} groups, max |cached - teacher-forced| = "
        f"{diff:.3g} bits")
  assert diff <= 1e-4
  assert teacher.mean() > 0.1  # not a degenerate model that predicts nothing


def _predictions(forward, params, tokens, group, groups):
  """Means and scales (2, N, Q, w_c, K) of ``group``'s elements, teacher-forced."""
  mixture = forward(params, tokens)[groups.slice_of(group)]
  cells = groups.cells(group)
  return np.stack([np.asarray(mixture.means[:, cells]),
                   np.asarray(mixture.scales[:, cells])])


def _elements(groups, group):
  """(cells, channel slice) of a group."""
  return groups.cells(group), slice(*groups.channels(groups.slice_of(group)))


def test_no_future_leak(models):
  model, params = models["uneven"]
  groups = model.grouping
  forward = jax.jit(model.apply)
  tokens = np.asarray(_tokens(model))
  rng = np.random.default_rng(0)
  for i in range(groups.num_groups):
    base_pred = _predictions(forward, params, tokens, i, groups)
    future = np.array(tokens)
    for j in range(i, groups.num_groups):  # the values of groups >= i
      cells, channels = _elements(groups, j)
      future[:, cells, channels] += rng.integers(1, 20, future[:, cells, channels].shape)
    np.testing.assert_allclose(_predictions(forward, params, future, i, groups),
                               base_pred, atol=1e-5)
    if i:  # ... while group i-1 does matter (the test is not vacuous).
      past = np.array(tokens)
      cells, channels = _elements(groups, i - 1)
      past[:, cells, channels] += 7
      assert not np.allclose(_predictions(forward, params, past, i, groups), base_pred,
                             atol=1e-4)


def test_one_slice_one_subset_is_factorized():
  """One group (one slice, no spatial split): every token reads the start vector,
  so the predictions cannot depend on any value: a factorized, per-cell prior.
  Pins that a group never sees its own values (the shift by one group)."""
  model = GroupedMixer(**dict(UNEVEN, channel_slices=(C,), spatial="none"))
  assert len(model.coding_plan()) == 1
  params = _init(model)
  tokens = _tokens(model)
  a, = model.apply(params, tokens)
  b, = model.apply(params, tokens * 3 + 1)
  np.testing.assert_allclose(np.asarray(a.means), np.asarray(b.means), atol=1e-6)
  np.testing.assert_allclose(np.asarray(a.scales), np.asarray(b.scales), atol=1e-6)
  # ... but it is a per-cell prior: the cell embedding makes cells differ.
  assert not np.allclose(np.asarray(a.means[:, 0]), np.asarray(a.means[:, 5]), atol=1e-4)


def _sensitive(model, params, group, block, changes):
  """Whether group ``group``'s predictions at block ``block`` change when the
  elements ``changes`` (a list of (group, block)) are changed."""
  groups = model.grouping
  tokens = np.asarray(_tokens(model, batch=1))
  before = _predictions(model.apply, params, tokens, group, groups)[:, :, block]
  changed = np.array(tokens)
  for j, q in changes:
    cell = groups.cells(j)[q]
    changed[:, cell, slice(*groups.channels(groups.slice_of(j)))] += 9
  after = _predictions(model.apply, params, changed, group, groups)[:, :, block]
  return not np.allclose(before, after, atol=1e-5)


def test_each_mixer_sees_what_it_should():
  """One layer of one mixer pins its semantics (4 slices x 2x2 phases, 16 groups):
  a cross-group layer reads every earlier group at its own 2x2 block and nothing
  elsewhere; an inner-group layer reads the previous group at every block and no
  group before it."""
  kw = dict(UNEVEN, num_layers=1, channel_slices=(2, 2, 2, 2))
  cross = GroupedMixer(**kw, first_mixer="cross")
  params = _init(cross)
  i, q, other = 9, 1, 2  # group 9 = slice 2, phase 1; blocks 1 and 2
  assert all(_sensitive(cross, params, i, q, [(j, q)]) for j in range(i))
  assert not _sensitive(cross, params, i, q, [(j, other) for j in range(i)])
  inner = GroupedMixer(**kw, first_mixer="inner")
  params = _init(inner)
  assert _sensitive(inner, params, i, q, [(i - 1, other)])
  assert not _sensitive(inner, params, i, q, [(j, b) for j in range(i - 1) for b in range(4)])


# --------------------------------------------------------------------------- #
# Codec, EntropyCoder, training.
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def codec():
  return Codec.from_config(get_config("grouped", "tiny"), seed=3)


def _crop(image, h, w):
  reps = (-(-h // image.shape[0]), -(-w // image.shape[1]), 1)
  return np.ascontiguousarray(np.tile(image, reps)[:h, :w])


PHOTOS = dict(sample_images(("astronaut", "coffee", "chelsea")))


@pytest.mark.parametrize("photo,hw", [
    ("astronaut", (1, 1)), ("chelsea", (15, 17)), ("coffee", (383, 385)),
    ("astronaut", (383, 385))], ids=str)
def test_codec_round_trips_exactly(codec, photo, hw):
  image = _crop(PHOTOS[photo], *hw)
  data = codec.compress(image)
  assert data[5] == 2  # the kind's bitstream code
  assert codec.read_header(data).model_kind == "grouped"
  estimate = codec.estimate(image)
  np.testing.assert_array_equal(codec.decompress_latent(data), estimate["y_hat"])
  np.testing.assert_array_equal(codec.decompress(data), estimate["reconstruction"])
  if hw[0] > 100:  # the coded size is the model's rate (tables from the plan)
    payload_bits = 8 * (len(data) - bitstream.HEADER_BYTES)
    assert abs(payload_bits / estimate["bits"] - 1) < 0.05, (payload_bits, estimate["bits"])
    # progressive: the first group coded, the rest predicted means
    partial = codec.decompress_latent(data, num_steps=1)
    assert partial.shape == estimate["y_hat"].shape and np.all(np.isfinite(partial))


def test_entropy_coder_round_trips_exactly(codec):
  coder = codec.entropy_coder
  y = codec.analyze(_crop(PHOTOS["coffee"], 383, 385))[0]  # (24, 25, C)
  for h, w in [(1, 1), (15, 17), y.shape[:2]]:
    latent = y[:h, :w]
    np.testing.assert_array_equal(coder.decompress(coder.compress(latent)), latent)


def test_tiny_training_lowers_the_rate():
  """50 steps of the tiny config on 64x64 crops of real photos: the bpp falls."""
  config = get_config("grouped", "tiny")
  config.crop_size = 64
  config.batch_size = 2
  config.lmbda_warmup_factor = 1.0  # constant lambda
  state = flax.jax_utils.replicate(train.create_train_state(config))
  step = jax.pmap(train.make_train_step(config), axis_name=train.AXIS,
                  in_axes=(0, 0, None))
  crops = np.stack([PHOTOS[name][r:r + 64, c:c + 64] for name in PHOTOS
                    for r in (0, 200) for c in (0, 200)])
  rng = np.random.default_rng(0)
  key = jax.random.key(0)
  bpp = []
  for _ in range(50):
    batch = crops[rng.choice(len(crops), 2, replace=False)][None]
    state, metrics = step(state, batch, key)
    bpp.append(float(metrics["bpp"][0]))
  assert np.all(np.isfinite(bpp))
  first, last = np.mean(bpp[:10]), np.mean(bpp[-10:])
  print(f"tiny grouped bpp: first 10 steps {first:.3f}, last 10 {last:.3f}")
  assert last < 0.8 * first, (first, last)
