"""Tests of m2t_jax.train that run in-process: config checks, the learning-rate
schedule, skipped non-finite steps (typed PRNG keys), flags, and warm starts
(the training runs themselves are in test_train.py)."""

import flax.jax_utils
import jax
import numpy as np
import pytest

from m2t_jax import configs, saved_model, train
from m2t_jax import model as model_lib

def _random_params(config, seed):
  """Normal(0, 1) values in the shapes and dtypes of ``config``'s parameters."""
  model = model_lib.build_model(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def _tiny(**overrides):
  config = configs.get_config("m2t", "tiny")
  config.crop_size = 64
  config.data.train_dir = "/nonexistent"
  for k, v in overrides.items():
    config[k] = v
  return config


# --------------------------------------------------------------------------- #
# In-process: config checks, schedule, skipped steps.
# --------------------------------------------------------------------------- #


def test_valid_config_passes():
  train.validate_training_config(_tiny(), num_devices=2, num_processes=1)
  paper = configs.get_config("m2t", "paper")
  paper.data.train_dir = "/data"
  train.validate_training_config(paper, num_devices=8, num_processes=2)


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=3), "batch_size=3 cannot be split evenly over 2 devices"),
    (dict(crop_size=32), "crop_size=32 must be a positive multiple of 16 * patch_size = 64"),
    (dict(crop_size=96), "crop_size=96 must be a positive multiple"),
    (dict(num_steps=0), "num_steps=0 must be >= 1"),
    (dict(lr_drop_fraction=0.0), "lr_drop_fraction=0.0 must be in (0, 1]"),
    (dict(checkpoint_every=0), "checkpoint_every=0 must be >= 1"),
    (dict(model="mt", crop_size=48), "crop_size=48 must be a positive multiple"),
])
def test_impossible_settings_fail_with_clear_messages(change, message):
  with pytest.raises(ValueError) as e:
    train.validate_training_config(_tiny(**change), num_devices=2, num_processes=1)
  assert message in str(e.value)


@pytest.mark.parametrize("field, value", [
    ("transformer.num_heads", 0), ("transformer.d_model", 0), ("transformer.mlp_dim", 0),
    ("transformer.num_layers", -1), ("latent_channels", 0), ("latent_channels", -2),
    ("elic.num_filters", 0), ("elic.num_res_blocks", -1), ("patch_size", 0),
    ("patch_size", -1),
])
def test_zero_or_negative_sizes_are_value_errors(field, value):
  # Before the check these were ZeroDivisionError / TypeError / IndexError from
  # the divisibility checks or from deep inside Flax.
  config = _tiny()
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=f"{field}={value}"):
    model_lib.validate_config(config)
  with pytest.raises(ValueError, match=f"{field}={value}"):
    train.validate_training_config(config, num_devices=1, num_processes=1)


def test_data_settings_are_checked():
  config = _tiny()
  config.data.train_dir = ""
  with pytest.raises(ValueError, match="needs data.train_dir"):
    train.validate_training_config(config, num_devices=1, num_processes=1)
  config.data.source = "tfds"
  with pytest.raises(ValueError, match="needs data.tfds_name"):
    train.validate_training_config(config, num_devices=1, num_processes=1)
  config.data.source = "webdataset"
  with pytest.raises(ValueError, match="data.source='webdataset' must be one of"):
    train.validate_training_config(config, num_devices=1, num_processes=1)


def test_all_errors_are_reported_together():
  config = _tiny(batch_size=3, crop_size=40)
  config.transformer.num_heads = 3  # d_model 32 is not divisible by 3
  with pytest.raises(ValueError) as e:
    train.validate_training_config(config, num_devices=2, num_processes=1)
  text = str(e.value)
  assert "batch_size=3" in text and "crop_size=40" in text and "num_heads=3" in text


def test_learning_rate_schedule():
  config = _tiny(learning_rate=1e-3, warmup_steps=10, num_steps=100, lr_drop_fraction=0.9)
  lr = lambda s: float(train.learning_rate_at_step(config, s))
  assert lr(0) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
  assert lr(4) == pytest.approx(5e-4)
  assert lr(9) == pytest.approx(1e-3)
  assert lr(50) == pytest.approx(1e-3)
  assert lr(89) == pytest.approx(1e-3)
  assert lr(90) == pytest.approx(1e-4)  # / 10 at 90%
  assert lr(99) == pytest.approx(1e-4)


def test_importing_the_package_defines_no_flags():
  # The absl flags belong to __main__ (python -m m2t_jax.train); importing the
  # package next to another absl program with a --config flag must not clash.
  from absl import flags  # noqa: PLC0415
  assert "workdir" not in flags.FLAGS and "config" not in flags.FLAGS
  assert callable(train.train_and_evaluate)


def test_nonfinite_step_is_skipped_and_counted():
  # A smaller model than tiny (one layer) to compile fast.
  config = _tiny(batch_size=1)
  config.transformer.num_layers = 1
  state = train.create_train_state(config)
  step = jax.pmap(train.make_train_step(config), axis_name=train.AXIS,
                  in_axes=(0, 0, None))
  replicated = flax.jax_utils.replicate(state, axis_name=train.AXIS)
  key = jax.random.key(0)  # typed key, broadcast to the devices (in_axes None)
  images = np.random.default_rng(0).uniform(0, 255, (1, 1, 64, 64, 3)).astype(np.float32)
  bad = images.copy()
  bad[0, 0, 3, 5, 1] = np.nan
  after_bad, metrics = step(replicated, bad, key)
  host = jax.device_get(jax.tree.map(lambda x: x[0], after_bad))
  assert not bool(metrics["finite"][0])
  assert int(host.step) == 1 and int(host.num_skipped) == 1
  for a, b in zip(jax.tree.leaves(host.params), jax.tree.leaves(state.params), strict=True):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(host.opt_state), jax.tree.leaves(state.opt_state),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  after_good, metrics = step(after_bad, images, key)
  host = jax.device_get(jax.tree.map(lambda x: x[0], after_good))
  assert bool(metrics["finite"][0])
  assert int(host.step) == 2 and int(host.num_skipped) == 1
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(host.params), jax.tree.leaves(state.params), strict=True)]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(host.params))
  assert sum(changed) > 0.9 * len(changed)


def test_warm_start_copies_matching_parameters_only(tmp_path):
  # An M2T model saved to disk warm-starts an MT model of the same size: the
  # autoencoder (same paths and shapes) is copied, MT's own parameters keep
  # their fresh values; a model of another size matches nothing and is refused.
  # Random values in the models' parameter shapes (jax.eval_shape: no compile);
  # warm starting only looks at paths, shapes and values.
  source_config = _tiny()
  source = _random_params(source_config, 0)
  saved_model.save_params(str(tmp_path / "m2t"), source_config, source)
  mt_config = _tiny()
  mt_config.model = "mt"
  fresh = _random_params(mt_config, 7)
  warm, copied, kept = train.warm_start_params(fresh, str(tmp_path / "m2t"))
  flat = lambda t: {jax.tree_util.keystr(p): np.asarray(v)
                    for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  src, new, out = flat(source), flat(fresh), flat(warm)
  assert set(copied) | set(kept) == set(out) and not set(copied) & set(kept)
  assert any("'analysis'" in k for k in copied) and any("'synthesis'" in k for k in copied)
  assert kept  # MT's mask token / heads differ from M2T's
  for k in copied:
    np.testing.assert_array_equal(out[k], src[k])
    if "kernel" in k:  # seeds differ, so a copied kernel is visible (biases are 0)
      assert not np.array_equal(out[k], new[k])
  for k in kept:
    np.testing.assert_array_equal(out[k], new[k])
  # skip=('entropy_model',) (config.init_entropy_model=False): an M2T warm start
  # of an M2T copies the autoencoder but no entropy-model leaf, although all match.
  fresh_m2t = _random_params(source_config, 7)
  warm, copied, kept = train.warm_start_params(fresh_m2t, str(tmp_path / "m2t"),
                                               skip=("entropy_model",))
  out, new = flat(warm), flat(fresh_m2t)
  assert kept and all(k.startswith("['entropy_model']") for k in kept)
  assert not any(k.startswith("['entropy_model']") for k in copied)
  for k in kept:
    np.testing.assert_array_equal(out[k], new[k])
  for k in copied:
    np.testing.assert_array_equal(out[k], src[k])
  other = _tiny()
  other.latent_channels = 8
  other.elic.num_filters = 6
  other.transformer.d_model = 12
  other.transformer.mlp_dim = 24
  other.transformer.num_heads = 2
  saved_model.save_params(str(tmp_path / "other"), other, _random_params(other, 1))
  with pytest.raises(ValueError, match="parameters have a match of the same path and shape"):
    train.warm_start_params(fresh, str(tmp_path / "other"))
