"""A trained model on disk: a folder with config.json and params.npz.

``save_params`` writes it (``Codec.save``, the end of training, ``ship_model``);
``load_params`` reads it back (``Codec.load``, ``EntropyCoder.load``, warm starts);
``locate`` turns a folder or a shipped model's name into the folder.
params.npz holds the flattened parameter tree (``flax.traverse_util``), one array
per leaf, keys joined with '/' (e.g.
``entropy_model/transformer/layer_0/attention/query/kernel``), in sorted path order.
"""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util


def is_saved_model(path: str) -> bool:
  """Whether ``path`` is a folder with config.json and params.npz."""
  return all(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "params.npz"))


def locate(path: str | None) -> str:
  """The folder of a model given as a saved-model folder or a shipped name.

  path: a folder written by ``save_params``; None = the default shipped model;
  a registered kind (e.g. 'm2t') = the shipped model of that kind; or a name from
  ``m2t_jax/models/manifest.json``. Raises FileNotFoundError otherwise (before
  anything is loaded, so a long run fails at once).
  """
  if path is not None and is_saved_model(path):
    return path
  from m2t_jax import models  # noqa: PLC0415 - the manifest is read on demand
  from m2t_jax.entropy import registry  # noqa: PLC0415 - imports the model modules
  if path is None or path in registry.names() or path in models.names():
    return models.resolve(path)
  raise FileNotFoundError(
      f"{path!r} is not a saved model folder: not a folder written by Codec.save "
      f"(config.json + params.npz), nor the name of a shipped model or kind; "
      f"shipped: {models.names()}.")


def save_params(path: str, config, params, dtype=None) -> None:
  """Folder ``path`` with config.json and params.npz.

  dtype: storage type of the parameters (e.g. np.float16 to halve the size);
  ``load_params`` always returns float32.
  """
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(ml_collections.ConfigDict(config).to_dict(), f, indent=1, sort_keys=True)
  # Sorted by path: the order jax.tree flattens a dict in, and the order in
  # which params.npz has always listed its arrays.
  flat = traverse_util.flatten_dict(params)
  flat = {"/".join(path): np.asarray(flat[path], dtype=dtype) for path in sorted(flat)}
  # Compressed: float16 weights shrink by ~8% (the shipped models share a 40 MB
  # package budget); np.load reads either form.
  np.savez_compressed(os.path.join(path, "params.npz"), **flat)


def load_params(path: str):
  """Inverse of ``save_params``: (ConfigDict, params as float32 jax arrays).

  Raises FileNotFoundError when ``path`` is not such a folder, ValueError when
  config.json is not a model config, params.npz cannot be read, or its
  parameters do not match the config (names or shapes) or are not all finite.
  """
  from m2t_jax import model as model_lib  # noqa: PLC0415 - model imports flax modules
  if not is_saved_model(path):
    raise FileNotFoundError(f"{path!r} is not a saved m2t_jax model (it needs "
                            "config.json and params.npz).")
  config_path = os.path.join(path, "config.json")
  params_path = os.path.join(path, "params.npz")
  with open(config_path) as f:
    raw = json.load(f)  # json.JSONDecodeError is a ValueError
  if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
    raise ValueError(f"{config_path!r} is not a model config (a JSON object with a "
                     "'model' kind and the fields of its config file).")
  config = ml_collections.ConfigDict(raw)
  try:
    with np.load(params_path) as flat:
      params = traverse_util.unflatten_dict(
          {key: jnp.asarray(flat[key], jnp.float32) for key in flat.files}, sep="/")
  except (OSError, ValueError, zipfile.BadZipFile, TypeError, IndexError) as e:
    raise ValueError(f"Cannot read the parameters {params_path!r}: {e}") from e
  try:  # shapes only: nothing is computed
    expected = jax.eval_shape(lambda: model_lib.init_params(config, 0))
  except Exception as e:  # noqa: BLE001 - a wrong field type fails anywhere in the model
    raise ValueError(f"{config_path!r} does not describe a model this version "
                     f"builds: {type(e).__name__}: {e}") from e
  if jax.tree.structure(expected) != jax.tree.structure(params):
    raise ValueError(f"The parameters in {path!r} do not match its config.json.")
  wrong = [f"{'/'.join(str(k.key) for k in where)}: {got.shape} (config: {want.shape})"
           for (where, want), got in zip(jax.tree_util.tree_flatten_with_path(expected)[0],
                                         jax.tree.leaves(params), strict=True)
           if want.shape != got.shape]
  if wrong:
    more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
    raise ValueError(f"The parameters in {path!r} do not match its config.json: "
                     + "; ".join(wrong[:3]) + more)
  # A NaN in D decodes every image to black without any error, one in E to a
  # latent out of range: refuse such weights here, naming them.
  broken = ["/".join(str(k.key) for k in where)
            for where, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if not np.isfinite(np.asarray(leaf)).all()]
  if broken:
    more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
    raise ValueError(f"The parameters in {path!r} are not all finite (NaN or inf in "
                     + ", ".join(broken[:3]) + more + "): a broken or diverged model.")
  return config, params
