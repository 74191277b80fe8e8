"""GroupedMixer: the groups, cached decoding equals teacher forcing, causality,
what each mixer sees, exact round trips, training.

Two models, both on 4x4 patches with C = 8: the ``tiny`` config (2 equal slices
x checkerboard = 4 groups; the defaults: slice-major, cross-group scope 'block')
and UNEVEN (slices 1, 2, 5 x the four 2x2 phases = 12 groups, with the other
settings of the inferred choices: subset-major, scope 'cell').
"""

import functools

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2t_jax import Codec, get_config, train
from m2t_jax import model as model_lib
from m2t_jax.app.demo import sample_images
from m2t_jax.coding import bitstream
from m2t_jax.coding.steps import CodingLoop, element_bits
from m2t_jax.entropy import base, gmm, grouping, patches, registry
from m2t_jax.entropy.grouped import GroupedMixer
from m2t_jax.nn.elic import DOWNSCALE
from m2t_jax.train.optim import make_optimizer
from m2t_jax.train.state import TrainState

C = 8
# XLA's backend optimisations off for what the tests compile once and run a few
# times (one-off passes, test-only decode steps, the training step): half the
# compile time, the same computation. The coding path (Codec, CodingLoop) keeps
# jax's defaults, so the round trips test exactly what users run.
FAST = {"xla_backend_optimization_level": 0}
fast_jit = functools.partial(jax.jit, compiler_options=FAST)
UNEVEN = dict(latent_channels=C, patch_size=4, d_model=32, num_layers=2, num_heads=2,
              mlp_dim=64, channel_slices=(1, 2, 5), spatial="phases",
              group_order="subset_major", cross_scope="cell")


def _tokens(model, batch=3, seed=0):
  x = jax.random.normal(jax.random.key(seed), (batch, model.num_tokens, C)) * 4
  return jnp.round(x)


def _random_params(init, seed):
  """Random parameters of the shapes ``init(key)`` gives: kernels N(0, 1/fan_in)
  (Flax's LeCun scale, untruncated), biases 0, LayerNorm scales 1, anything else
  (embeddings, the start vector) N(0, 0.02^2). Drawn as one normal vector: the
  tiny model's 300-odd Flax initialisers take 15-30 s to compile on this CPU."""
  shapes = jax.eval_shape(init, jax.random.key(seed))
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  sizes = [int(np.prod(leaf.shape)) for _, leaf in leaves]
  noise = np.split(np.asarray(jax.random.normal(jax.random.key(seed), (sum(sizes),))),
                   np.cumsum(sizes)[:-1])
  out = []
  for (path, leaf), z in zip(leaves, noise, strict=True):
    name, parent = path[-1].key, path[-2].key if len(path) > 1 else ""
    if name == "bias":
      out.append(np.zeros(leaf.shape, np.float32))
    elif name == "scale":
      out.append(np.ones(leaf.shape, np.float32))
    elif name == "kernel":  # q/k/v kernels (d, heads, head_dim) contract d only
      fan_in = leaf.shape[0] if parent in ("query", "key", "value") else np.prod(leaf.shape[:-1])
      out.append((z / np.sqrt(fan_in)).reshape(leaf.shape).astype(np.float32))
    else:
      out.append((0.02 * z).reshape(leaf.shape).astype(np.float32))
  return jax.tree_util.tree_unflatten(treedef, out)


def _init(model, seed=1):
  tokens = _tokens(model)
  return _random_params(lambda k: model.init(k, tokens, tokens, method="rate"), seed)


@pytest.fixture(scope="module")
def uneven():
  """(model, params) of UNEVEN."""
  model = GroupedMixer(**UNEVEN)
  return model, _init(model)


@pytest.fixture(scope="module")
def codec():
  """The tiny config's codec with random parameters, shared so that its jitted
  steps compile once."""
  config = get_config("grouped", "tiny")
  model = model_lib.build_model(config)
  image = jnp.zeros((1, DOWNSCALE, DOWNSCALE, 3))
  return Codec(config, _random_params(lambda k: model.init(k, image), 3)["params"])


def _crop(image, h, w):
  reps = (-(-h // image.shape[0]), -(-w // image.shape[1]), 1)
  return np.ascontiguousarray(np.tile(image, reps)[:h, :w])


PHOTOS = dict(sample_images(("astronaut", "coffee", "chelsea")))


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


def test_subset_major_plan():
  """UNEVEN codes the three slices at one phase before the next phase."""
  plan = GroupedMixer(**UNEVEN).coding_plan()
  base.check_plan(plan, 16, C)
  assert [step.channels for step in plan[:4]] == [(0, 1), (1, 3), (3, 8), (0, 1)]
  np.testing.assert_array_equal(plan[0].cells, plan[2].cells)
  assert not np.array_equal(plan[2].cells, plan[3].cells)


# --------------------------------------------------------------------------- #
# The model.
# --------------------------------------------------------------------------- #


def _predictions(forward, params, tokens, group, groups):
  """Means and scales (2, N, Q, w_c, K) of ``group``'s elements, teacher-forced."""
  mixture = forward(params, tokens)[groups.slice_of(group)]
  cells = groups.cells(group)
  return np.stack([np.asarray(mixture.means[:, cells]),
                   np.asarray(mixture.scales[:, cells])])


def _elements(groups, group):
  """(cells, channel slice) of a group."""
  return groups.cells(group), slice(*groups.channels(groups.slice_of(group)))


@pytest.mark.parametrize("name", ["tiny", "uneven"])
def test_no_future_leak(codec, uneven, name):
  if name == "tiny":
    model, params = codec.entropy_model, {"params": codec.params["entropy_model"]}
  else:
    model, params = uneven
  groups = model.grouping
  forward = fast_jit(model.apply)
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
  forward = fast_jit(model.apply)
  a, = forward(params, tokens)
  b, = forward(params, tokens * 3 + 1)
  np.testing.assert_allclose(np.asarray(a.means), np.asarray(b.means), atol=1e-6)
  np.testing.assert_allclose(np.asarray(a.scales), np.asarray(b.scales), atol=1e-6)
  # ... but it is a per-cell prior: the cell embedding makes cells differ.
  assert not np.allclose(np.asarray(a.means[:, 0]), np.asarray(a.means[:, 5]), atol=1e-4)


def _sensitive(model, forward, params, group, block, changes):
  """Whether group ``group``'s predictions at block ``block`` change when the
  elements ``changes`` (a list of (group, block)) are changed."""
  groups = model.grouping
  tokens = np.asarray(_tokens(model, batch=1))
  before = _predictions(forward, params, tokens, group, groups)[:, :, block]
  changed = np.array(tokens)
  for j, q in changes:
    cell = groups.cells(j)[q]
    changed[:, cell, slice(*groups.channels(groups.slice_of(j)))] += 9
  after = _predictions(forward, params, changed, group, groups)[:, :, block]
  return not np.allclose(before, after, atol=1e-5)


def test_each_mixer_sees_what_it_should():
  """One layer of one mixer pins its semantics (4 slices x 2x2 phases, 16 groups,
  slice-major): a cross-group layer reads every earlier group at its own 2x2
  block and nothing elsewhere; an inner-group layer reads the previous group at
  every block and no group before it."""
  kw = dict(UNEVEN, num_layers=1, channel_slices=(2, 2, 2, 2), group_order="slice_major",
            cross_scope="block")
  i, q, other = 9, 1, 2  # group 9 = slice 2, phase 1; blocks 1 and 2
  cross = GroupedMixer(**kw, first_mixer="cross")
  sees = functools.partial(_sensitive, cross, fast_jit(cross.apply), _init(cross), i, q)
  assert all(sees([(j, q)]) for j in range(i))
  assert not sees([(j, other) for j in range(i)])
  inner = GroupedMixer(**kw, first_mixer="inner")
  sees = functools.partial(_sensitive, inner, fast_jit(inner.apply), _init(inner), i, q)
  assert sees([(i - 1, other)])
  assert not sees([(j, b) for j in range(i - 1) for b in range(4)])
  # Scope 'cell': the token's own input (group 8) and the earlier slices at its
  # own cell (groups 1 and 5: phase 1 of slices 0 and 1), nothing else.
  cell = GroupedMixer(**dict(kw, cross_scope="cell"), first_mixer="cross")
  sees = functools.partial(_sensitive, cell, fast_jit(cell.apply), _init(cell), i, q)
  assert all(sees([(j, q)]) for j in (1, 5, 8))
  assert not sees([(j, q) for j in (0, 2, 3, 4, 6, 7)])


# --------------------------------------------------------------------------- #
# Codec, EntropyCoder, training.
# --------------------------------------------------------------------------- #


# Odd sizes, and real photos at one of them (the same compiled shapes).
CASES = [("astronaut", (1, 1)), ("chelsea", (15, 17)), ("coffee", (383, 385)),
         ("astronaut", (383, 385))]


@pytest.fixture(scope="module")
def streams(codec):
  """(image, bytes) of each case."""
  return {case: (image, codec.compress(image)) for case in CASES
          for image in [_crop(PHOTOS[case[0]], *case[1])]}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_codec_round_trips_exactly(codec, streams, case):
  image, data = streams[case]
  assert data[5] == 2  # the kind's bitstream code
  assert codec.read_header(data).model_kind == "grouped"
  y_hat = codec.analyze(image)
  np.testing.assert_array_equal(codec.decompress_latent(data), y_hat)
  if case[1][0] > 100:  # the image too (one synthesis size compiled, not three)
    decoded = codec.decompress(data)
    assert decoded.shape == image.shape
    np.testing.assert_array_equal(decoded, codec.reconstruct(y_hat, *image.shape[:2]))
    # The coded size is the model's rate (tables from the plan's elements).
    bits = codec.estimate(image)["bits"]
    payload_bits = 8 * (len(data) - bitstream.HEADER_BYTES)
    assert abs(payload_bits / bits - 1) < 0.05, (payload_bits, bits)
    # progressive: the first group coded, the others their predicted means
    partial = codec.decompress_latent(data, num_steps=1)
    assert partial.shape == y_hat.shape and np.all(np.isfinite(partial))
    assert not np.array_equal(partial, y_hat)


def test_entropy_coder_round_trips_exactly(codec, streams):
  """Latents of 1x1, 1x2 and 24x25 (those of the cases' images)."""
  coder = codec.entropy_coder
  for image, _ in streams.values():
    latent = codec.analyze(image)[0]
    np.testing.assert_array_equal(coder.decompress(coder.compress(latent)), latent)


def _loop_bits(model, params, tokens, config):
  """Per-element bits (N, L, C) from the cached decode steps, run by the generic
  coding loop (init_decode_state, jitted decode_step with its tables,
  decode_update) and fed the true values, as the encoder does."""
  loop = CodingLoop(model, params, config, np.ones(tokens.shape[:2], bool))
  bits = np.zeros(tokens.shape, np.float32)
  for step in loop:
    group = step.take(tokens)
    step.put(bits, np.asarray(element_bits(step.mixture, group, model.prob_floor)))
    step.feed(group)
  return bits


def _step_bits(model, params, tokens):
  """The same through the interface alone, one jit per step without the tables
  (a third of the compile time of a coding-loop step)."""
  def one(params, state, i, values):
    cells, mixture, state = model.apply({"params": params}, state, i, i,
                                        method="decode_step")  # shape = the step
    return gmm.bits(mixture, values, model.prob_floor), model.decode_update(
        state, i, cells, values)
  step_fn = fast_jit(one, static_argnums=2)
  state = model.init_decode_state(np.ones(tokens.shape[:2], bool))
  bits = np.zeros(tokens.shape, np.float32)
  for i, step in enumerate(model.coding_plan()):
    values = tokens[:, step.cells, slice(*step.channels)]
    step_bits, state = step_fn(params, state, i, values)
    bits[:, step.cells, slice(*step.channels)] = np.asarray(step_bits)
  return bits


@pytest.mark.parametrize("name", ["tiny", "uneven"])
def test_cached_decode_matches_teacher_forcing(uneven, codec, name):
  """tiny: the codec's own model, the latent of a photo (42 patches, the shapes
  the round-trip tests compile) and the coding loop; uneven: random tokens."""
  if name == "tiny":
    model, params = codec.entropy_model, codec.params["entropy_model"]
    y = codec.analyze(_crop(PHOTOS["coffee"], 383, 385))
    tokens = np.asarray(patches.to_patches(jnp.asarray(y, jnp.float32),
                                           codec.config.patch_size)[0])
  else:
    model, params = uneven[0], uneven[1]["params"]
    tokens = np.asarray(_tokens(model))
  forward = fast_jit(lambda p, t: model.apply({"params": p}, t, t, method="rate").bits)
  teacher = np.asarray(forward(params, tokens))
  cached = (_loop_bits(model, params, tokens, codec.config) if name == "tiny"
            else _step_bits(model, params, tokens))
  diff = np.abs(cached - teacher).max()
  print(f"{name}: {len(model.coding_plan())} groups, max |cached - teacher-forced| = "
        f"{diff:.3g} bits")
  assert diff <= 1e-4
  assert teacher.mean() > 0.1  # not a degenerate model that predicts nothing


def test_tiny_training_lowers_the_rate(codec):
  """50 steps of the tiny config on 64x64 crops of real photos, the loss almost
  all rate: the bpp falls. The codec's random parameters start the run (an
  initialisation compiled once)."""
  config = get_config("grouped", "tiny")
  config.crop_size = 64
  config.batch_size = 2
  # At the tiny config's lambda a random model's MSE (~1e4) rules the loss, and
  # the rate may rise while it falls (with one residual block per stage it did:
  # 0.082 -> 0.088 bpp). A lambda 1000x smaller leaves the rate to be learned.
  config.lmbda = config.lmbda / 1000
  config.lmbda_warmup_factor = 1.0  # constant lambda
  optimizer = make_optimizer(config)
  params = codec.params
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=fast_jit(optimizer.init)(params),
                     num_skipped=jnp.zeros((), jnp.int32))
  # On the pmap axis's mesh, as the training loop does: the step compiles once.
  state = flax.jax_utils.replicate(state, axis_name=train.AXIS)
  crops = np.stack([PHOTOS[name][r:r + 64, c:c + 64] for name in PHOTOS
                    for r in (0, 200) for c in (0, 200)])
  rng = np.random.default_rng(0)
  key = jax.random.key(0)
  step = jax.pmap(train.make_train_step(config, optimizer=optimizer),
                  axis_name=train.AXIS, in_axes=(0, 0, None), donate_argnums=(0,))
  step = step.lower(state, crops[None, :2], key).compile(compiler_options=FAST)
  bpp = []
  for _ in range(50):
    batch = crops[rng.choice(len(crops), 2, replace=False)][None]
    state, metrics = step(state, batch, key)
    bpp.append(float(metrics["bpp"][0]))
  assert np.all(np.isfinite(bpp))
  first, last = np.mean(bpp[:10]), np.mean(bpp[-10:])
  print(f"tiny grouped bpp: first 10 steps {first:.3f}, last 10 {last:.3f}")
  assert last < 0.85 * first, (first, last)  # measured: 0.081 -> 0.056
