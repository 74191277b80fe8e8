"""The model fingerprint covers what decoding depends on, and nothing else."""

import jax
import numpy as np
import pytest
from skimage import data as skdata

from m2t_jax import BitstreamError, Codec, get_config
from m2t_jax.coding import fingerprint as fp

# Written out by hand from configs/common.py: what only training reads.
_TRAINING_CHANGES = {
    "lmbda": 0.5, "num_steps": 7, "init_from": "/elsewhere/model", "learning_rate": 3e-4,
    "batch_size": 64, "crop_size": 128, "seed": 5, "size": "custom", "weight_decay": 0.0,
    "mt_mask_ratio_min": 0.2, "transformer.dropout": 0.1, "data.train_dir": "/other/photos",
    "data.val_dir": "/other/val", "checkpoint_every": 3, "eval_every": 9,
}
# What decoding reads: each changes the tables or the order of the coded elements.
_DECODING_CHANGES = {
    "schedule.num_steps": 3, "schedule.alpha": 2.0, "schedule.order": "random",
    "schedule.seed": 1, "gmm.table_radius": 9, "gmm.narrow_radius": 1,
    "gmm.wide_threshold": 0.5, "gmm.prob_floor": 2.0**-16, "gmm.scale_floor": 0.02,
    "transformer.num_heads": 4, "embed_delta": 4.0, "model": "mt",
}


def _set(config, path, value):
  *parents, leaf = path.split(".")
  node = config
  for key in parents:
    node = node[key]
  node[leaf] = value
  return config


@pytest.fixture(scope="module")
def base():
  config = get_config("m2t", "tiny")
  return config, Codec.from_config(config, seed=0).params


@pytest.mark.parametrize("path", sorted(_TRAINING_CHANGES))
def test_training_fields_keep_the_fingerprint(base, path):
  config, params = base
  changed = _set(config.copy_and_resolve_references(), path, _TRAINING_CHANGES[path])
  assert fp.fingerprint(changed, params) == fp.fingerprint(config, params)


@pytest.mark.parametrize("path", sorted(_DECODING_CHANGES))
def test_decoding_fields_change_the_fingerprint(base, path):
  config, params = base
  changed = _set(config.copy_and_resolve_references(), path, _DECODING_CHANGES[path])
  assert fp.fingerprint(changed, params) != fp.fingerprint(config, params)


def test_one_parameter_ulp_changes_the_fingerprint(base):
  config, params = base
  leaves, tree = jax.tree.flatten(params)
  bumped = np.array(leaves[-1])
  bumped.flat[0] = np.nextafter(bumped.flat[0], np.float32(np.inf))
  other = jax.tree.unflatten(tree, leaves[:-1] + [bumped])
  assert fp.fingerprint(config, other) != fp.fingerprint(config, params)


def test_same_weights_from_another_run_decode_each_others_streams(base, tmp_path):
  config, params = base
  image = np.ascontiguousarray(skdata.coffee()[:40, :60])
  other_run = config.copy_and_resolve_references()
  for path, value in _TRAINING_CHANGES.items():
    _set(other_run, path, value)
  Codec(config, params).save(str(tmp_path / "a"))
  Codec(other_run, params).save(str(tmp_path / "b"))
  a, b = Codec.load(str(tmp_path / "a")), Codec.load(str(tmp_path / "b"))
  assert a.fingerprint == b.fingerprint
  # They share one compilation of E, D and the coding steps, and each keeps its
  # own training fields.
  assert b._analysis is a._analysis
  assert b.entropy_coder._shared_config is a.entropy_coder._shared_config
  assert (a.lmbda, b.lmbda) == (config.lmbda, _TRAINING_CHANGES["lmbda"])
  assert b.config.init_from == "/elsewhere/model"
  np.testing.assert_array_equal(b.decompress(a.compress(image)), a.decompress(a.compress(image)))
  np.testing.assert_array_equal(a.decompress(b.compress(image)), a.decompress(a.compress(image)))
  # A decoding field differs: another fingerprint, and the stream is refused.
  c = Codec(_set(config.copy_and_resolve_references(), "gmm.table_radius", 9), params)
  assert c.fingerprint != a.fingerprint and c._analysis is not a._analysis
  with pytest.raises(BitstreamError, match="another model"):
    c.decompress(a.compress(image))
