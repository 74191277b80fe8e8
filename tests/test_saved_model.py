"""Saved models on disk (m2t_jax/saved_model.py): the shipped models load to exactly
the arrays of their params.npz, and saving writes the same file contents back."""

import os
import zipfile

import jax
import numpy as np
import pytest

from m2t_jax import saved_model


@pytest.fixture(scope="module")
def shipped():
  """(folder, config, params) of the default shipped model."""
  folder = saved_model.locate(None)
  config, params = saved_model.load_params(folder)
  return folder, config, params


def test_a_shipped_model_loads_to_exactly_its_stored_arrays(shipped):
  folder, _, params = shipped
  with np.load(os.path.join(folder, "params.npz")) as stored:
    keys = stored.files
    assert len(keys) > 100
    for key in keys:
      node = params  # walked by hand: the '/'-joined path of each stored array
      for part in key.split("/"):
        node = node[part]
      value = np.asarray(node)
      assert value.dtype == np.float32 and value.shape == stored[key].shape, key
      np.testing.assert_array_equal(value, stored[key].astype(np.float32), err_msg=key)

  def count(tree):
    return sum(count(v) for v in tree.values()) if isinstance(tree, dict) else 1

  assert count(params) == len(keys)  # nothing loaded that is not stored


def test_saving_a_shipped_model_again_writes_the_same_arrays(shipped, tmp_path):
  folder, config, params = shipped
  source = os.path.join(folder, "params.npz")
  with np.load(source) as stored:
    dtype = stored[stored.files[0]].dtype  # the shipped models store float16
  saved_model.save_params(str(tmp_path), config, params, dtype=dtype)
  with zipfile.ZipFile(source) as a, zipfile.ZipFile(tmp_path / "params.npz") as b:
    # Same members in the same order, each the same .npy bytes (header, dtype,
    # shape and data): the format written before and after is one format.
    assert a.namelist() == b.namelist()
    for name in a.namelist():
      assert a.read(name) == b.read(name), name
  again_config, again = saved_model.load_params(str(tmp_path))
  assert again_config.to_dict() == config.to_dict()
  assert jax.tree.structure(again) == jax.tree.structure(params)
  for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(x, y)
