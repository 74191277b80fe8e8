"""Nested M2T (``entropy/nested.py``): a cached decode of any admissible size
schedule pays exactly the teacher-forced bits of its exits; the full schedule is
an M2T; schedules go through ``Codec`` and the stream, inadmissible ones are
refused; training lowers every exit's bits."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image

from m2t_jax import BitstreamError, Codec, configs, model as model_lib, saved_model, train
from m2t_jax.coding import bitstream
from m2t_jax.coding.entropy_coder import EntropyCoder
from m2t_jax.coding.steps import CodingLoop, element_bits

SCHEDULES = ("full", (2, 2, 1, 0), (2, 1, 1, 1), "smallest")


@pytest.fixture(scope="module")
def coder():
  return EntropyCoder.from_config(configs.get_config("nested", "tiny"), seed=1)


@pytest.fixture(scope="module")
def latent():
  """An int latent (1, 8, 12, 8): six tiny patches."""
  return np.random.default_rng(0).integers(-6, 7, (1, 8, 12, 8))


@pytest.mark.parametrize("spec", SCHEDULES, ids=str)
def test_cached_decode_matches_teacher_forcing(coder, latent, spec):
  model = coder.scheduled(spec)
  schedule = model.active_schedule
  tokens, valid = coder._tokens(latent)
  teacher = np.asarray(model.apply({"params": coder.params}, jnp.asarray(tokens, jnp.float32),
                                   jnp.asarray(tokens, jnp.float32), method="exit_bits"))
  assert teacher.shape == (3,) + tokens.shape
  rows = np.arange(tokens.shape[0])[:, None]
  loop_bits = 0.0
  for step in CodingLoop(model, coder.params, coder.config, valid):
    group = step.take(tokens)
    got = np.asarray(element_bits(step.mixture, group, coder.config.gmm.prob_floor))
    exits = teacher[:, rows, step.cells]  # (E, N, g, C)
    np.testing.assert_allclose(got, exits[schedule[step.index]], atol=1e-4)
    # The check bites: every other exit pays differently for this step.
    for other in set(range(3)) - {schedule[step.index]}:
      assert np.abs(exits[other] - got).max() > 1e-2
    loop_bits += got.sum()
    step.feed(group)
  # The one-pass rate of the schedule (what estimate_bits uses) is the same.
  assert coder.estimate_bits(latent, spec) == pytest.approx(loop_bits, rel=1e-5)


def test_full_schedule_equals_m2t(coder, latent):
  """The last exit has M2T's parameter names: an M2T given the nested model's
  parameters without the early exits' decodes to the very same bytes."""
  config = configs.get_config("m2t", "tiny")
  config.transformer.num_layers = 3
  params = jax.device_get(coder.params)
  m2t_params = {k: v for k, v in params.items() if not k.startswith("exit_heads_")}
  m2t_params["transformer"] = {k: v for k, v in params["transformer"].items()
                               if not k.startswith("ln_exit_")}
  m2t = EntropyCoder(config, m2t_params)
  reference = EntropyCoder.from_config(config, seed=1).params  # M2T's own tree
  assert (jax.tree_util.tree_structure(reference)
          == jax.tree_util.tree_structure(m2t_params))
  assert m2t.encode_tokens(latent) == coder.encode_tokens(latent, "full")
  assert m2t.encode_tokens(latent) != coder.encode_tokens(latent, "smallest")
  tokens = jnp.asarray(coder._tokens(latent)[0], jnp.float32)
  expected = m2t.model.apply({"params": m2t_params}, tokens)
  got = coder.model.apply({"params": params}, tokens)[-1]
  for a, b in zip(expected, got, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def codec():
  return Codec.from_config(configs.get_config("nested", "tiny"), seed=2)


def test_codec_round_trips_and_header(codec):
  image = skimage.data.astronaut()[100:170, 150:240]
  reconstruction = codec.estimate(image)["reconstruction"]
  streams = {}
  for spec, exits in (("full", (2, 2, 2, 2)), ("fast", (1, 1, 1, 1)),
                      ("smallest", (0, 0, 0, 0)), ("2,1,1,0", (2, 1, 1, 0))):
    data = codec.compress(image, size_schedule=spec)
    assert bitstream.unpack(data)[0].size_schedule == exits
    assert len(data) == (bitstream.HEADER_BYTES + 4
                         + len(bitstream.unpack(data)[1]))  # one byte per step
    assert np.array_equal(codec.decompress(data), reconstruction)
    streams[spec] = data
  assert len(set(streams.values())) == 4
  assert codec.compress(image) == streams["full"]  # the config's default


def test_inadmissible_schedules_are_refused(codec):
  image = skimage.data.chelsea()[:40, :50]
  for spec, match in (((0, 1, 1, 2), "not admissible: step 1 runs exit 1"),
                      ((2, 2, 1), "4 steps, the schedule has 3"),
                      ((2, 2, 1, 3), "exits are 0..2"),
                      ("medium", "Unknown size schedule"),
                      ((2, 2, 1.0, 0), "integers")):
    with pytest.raises(ValueError, match=match):
      codec.compress(image, size_schedule=spec)
  with pytest.raises(ValueError, match="one model size"):
    Codec.from_config(configs.get_config("m2t", "tiny")).compress(image, "fast")
  # A stream whose schedule was edited (CRC recomputed) is refused by the decoder.
  data = codec.compress(image, size_schedule=(2, 2, 1, 0))
  header, payload = bitstream.unpack(data)
  for forged in ((0, 1, 1, 2), ()):
    edited = bitstream.pack(bitstream.Header(**{**header.__dict__,
                                                "size_schedule": forged}), payload)
    with pytest.raises(BitstreamError, match="size schedule"):
      codec.decompress(edited)


def test_training_lowers_the_bits_of_every_exit(tmp_path):
  """50 entropy-only steps of the tiny config on a frozen random autoencoder."""
  source = configs.get_config("m2t", "tiny")
  source_params = jax.device_get(model_lib.init_params(source, seed=3))
  saved_model.save_params(str(tmp_path / "source"), source, source_params)
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("astronaut", "coffee", "chelsea"):
    Image.fromarray(getattr(skimage.data, name)()).save(photos / f"{name}.png")
  config = configs.get_config("nested", "tiny")
  for key, value in dict(train_part="entropy", init_from=str(tmp_path / "source"),
                         crop_size=64, batch_size=4, num_steps=50, warmup_steps=0,
                         learning_rate=3e-3, checkpoint_every=50, log_every=50,
                         eval_every=0).items():
    config[key] = value
  config.data.train_dir = str(photos)
  initial, _, _ = train.warm_start_params(  # what the run starts from
      jax.device_get(model_lib.init_params(config, seed=config.seed)),
      str(tmp_path / "source"))
  train.train_and_evaluate(config, str(tmp_path / "run"))
  _, trained = saved_model.load_params(os.path.join(tmp_path, "run", "model"))
  latents = [Codec(config, trained).analyze(skimage.data.coffee())]
  for exit_index in range(3):
    schedule = (exit_index,) * 4
    bits = [sum(EntropyCoder(config, p["entropy_model"]).estimate_bits(y, schedule)
                for y in latents) for p in (initial, trained)]
    assert bits[1] < 0.8 * bits[0], (exit_index, bits)


# --- width nesting (MatFormer-style MLP widths) ---------------------------------
WIDTHS = (1.0, 0.5, 0.25)
# (exit, width) per step: widths growing, shrinking and mixed, with depth exits
# that never grow (the only depth rule); the last mixes both.
WIDTH_SCHEDULES = {
    "growing": ((2, 2), (2, 1), (2, 1), (2, 0)),
    "shrinking": ((2, 0), (2, 1), (2, 2), (2, 2)),
    "mixed": ((2, 1), (2, 0), (2, 2), (2, 0)),
    "depth_and_width": ((2, 2), (2, 0), (1, 1), (0, 0)),
}


def _width_config():
  config = configs.get_config("nested", "tiny")
  config.nested.mlp_widths = WIDTHS
  return config


@pytest.fixture(scope="module")
def width_coder():
  return EntropyCoder.from_config(_width_config(), seed=4)


@pytest.mark.parametrize("name", sorted(WIDTH_SCHEDULES))
def test_width_schedule_matches_teacher_forcing(width_coder, latent, name):
  coder = width_coder
  pairs = WIDTH_SCHEDULES[name]
  model = coder.scheduled(pairs)
  assert [divmod(c, 16)[::-1] for c in model.active_schedule] == list(pairs)
  tokens, valid = coder._tokens(latent)
  t = jnp.asarray(tokens, jnp.float32)
  # The teacher-forced pass with every slot at its step's width (per-slot masks).
  hidden = np.repeat([model.hidden_sizes()[w] for _, w in pairs], model.schedule.sizes)
  assert model.hidden_sizes() == (64, 32, 16)
  teacher = np.asarray(model.apply({"params": coder.params}, t, t, True, hidden,
                                   method="exit_bits"))
  full_width = np.asarray(model.apply({"params": coder.params}, t, t, method="exit_bits"))
  rows = np.arange(tokens.shape[0])[:, None]
  loop_bits, bites = 0.0, 0.0
  for step in CodingLoop(model, coder.params, coder.config, valid):
    group = step.take(tokens)
    got = np.asarray(element_bits(step.mixture, group, coder.config.gmm.prob_floor))
    exit_index = pairs[step.index][0]
    diff = np.abs(got - teacher[exit_index][rows, step.cells]).max()
    assert diff <= 1e-4, (step.index, diff)
    bites = max(bites, np.abs(got - full_width[exit_index][rows, step.cells]).max())
    loop_bits += got.sum()
    step.feed(group)
  assert bites > 1e-2  # the widths matter: the full-width pass pays otherwise
  assert coder.estimate_bits(latent, pairs) == pytest.approx(loop_bits, rel=1e-5)


def test_width_schedules_round_trip_and_are_checked(width_coder, latent):
  coder = width_coder
  streams = set()
  for spec in ("full", "fast", "smallest", "2:2,2:1,1:0,0:2",
               *WIDTH_SCHEDULES.values()):
    data = coder.compress(latent[0], size_schedule=spec)
    assert np.array_equal(coder.decompress(data), latent[0])
    streams.add(data)
  assert len(streams) == 8
  # 'fast' and 'smallest' use the narrower widths; the codes are exit + 16 * width.
  assert coder.model.resolve_size_schedule("smallest") == (32,) * 4
  for spec, match in ((((2, 3),) * 4, "MLP width 3; this model's widths are 0..2"),
                      ("2:0,2:0,0:1,1:1", "not admissible: step 3 runs exit 1"),
                      (((2, 0, 1),) * 4, "(exit, width) pairs")):
    with pytest.raises(ValueError, match=re.escape(match) if "(" in match else match):
      coder.compress(latent[0], size_schedule=spec)
  # A forged stream naming a width the model lacks is refused, as is a width
  # schedule given to a depth-only model (its only width is index 0).
  data = coder.compress(latent[0], size_schedule=WIDTH_SCHEDULES["mixed"])
  header, payload = bitstream.unpack(data)
  edited = bitstream.pack(bitstream.Header(**{**header.__dict__,
                                              "size_schedule": (2 + 48,) * 4}), payload)
  with pytest.raises(BitstreamError, match="size schedule"):
    coder.decompress(edited)
  depth_only = EntropyCoder.from_config(configs.get_config("nested", "tiny"), seed=4)
  with pytest.raises(ValueError, match="widths are 0..0"):
    depth_only.compress(latent[0], size_schedule="2:1,2:1,2:1,2:1")


def test_narrow_steps_compute_fewer_flops(width_coder):
  """Decode steps slice the MLP weights: a quarter-width step is cheaper."""
  coder = width_coder
  flops = {}
  for name, spec in (("full", "full"), ("quarter", "2:2,2:2,2:2,2:2")):
    model = coder.scheduled(spec)
    state = model.init_decode_state(np.ones((2, model.num_tokens), bool))
    step = jax.jit(lambda p, s, i, shape, model=model: model.apply(
        {"params": p}, s, i, shape, method="decode_step"), static_argnums=3)
    cost = step.lower(coder.params, state, np.int32(3), model.step_shape(3)).cost_analysis()
    flops[name] = (cost[0] if isinstance(cost, list) else cost)["flops"]
  assert flops["quarter"] < 0.85 * flops["full"]


def test_width_nesting_trains_every_width(width_coder):
  """rate(train=True) with an rng draws widths per example and step: two draws
  give different bits, and without an rng it is the full-width training rate."""
  coder = width_coder
  tokens = jnp.asarray(np.random.default_rng(1).integers(-4, 5, (6, 16, 8)), jnp.float32)
  rate = lambda rng: np.asarray(coder.model.apply(
      {"params": coder.params}, tokens, tokens, rng, True, method="rate").bits)
  a, b = rate(jax.random.key(0)), rate(jax.random.key(1))
  assert np.abs(a - b).max() > 1e-3
  np.testing.assert_array_equal(rate(jax.random.key(0)), a)  # deterministic per key
  full = EntropyCoder(configs.get_config("nested", "tiny"), coder.params)
  np.testing.assert_allclose(rate(None), np.asarray(full.model.apply(
      {"params": coder.params}, tokens, tokens, None, True, method="rate").bits), atol=1e-6)


def test_neutral_widths_keep_the_fingerprint():
  # Old depth-only streams name configs without mlp_widths: (1.0,) leaves the
  # fingerprint as it was, any other widths change it.
  from m2t_jax.coding import fingerprint  # noqa: PLC0415
  config = configs.get_config("nested", "tiny")
  params = {"w": np.zeros(3, np.float32)}
  base = fingerprint.fingerprint(config, params)
  without = config.to_dict()
  del without["nested"]["mlp_widths"]
  assert fingerprint.fingerprint(without, params) == base
  assert fingerprint.fingerprint(_width_config(), params) != base


@pytest.mark.parametrize("widths", [(), (0.5,), (1.0, 1.0), (1.0, 0.7), (1.0, 0.5, 0.0),
                                    (1.0, 0.25, 0.5)])
def test_impossible_widths_are_refused(widths):
  config = configs.get_config("nested", "tiny")  # mlp_dim 64: 0.7 is 44.8 units
  config.nested.mlp_widths = widths
  with pytest.raises(ValueError, match="nested.mlp_widths must be"):
    model_lib.validate_config(config)
