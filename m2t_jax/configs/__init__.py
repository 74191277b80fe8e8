"""ml_collections configs, one file per model kind: ``get_config(model, size)``.

``load_config('m2t', 'tiny')``, ``load_config('m2t:tiny')`` or
``load_config('m2t_jax/configs/mt.py:small')`` for specs given on a command line.
"""

import importlib.util

import ml_collections


def get_config(model: str = "m2t", size: str = "paper"):
  """The config of kind ``model`` (see ``entropy/registry.py``) at ``size``.

  Python shortcut for ``--config=m2t_jax/configs/{model}.py:{size}``.
  """
  from m2t_jax.entropy import registry  # noqa: PLC0415 - registry imports the configs
  return registry.get(model).config(size)


def load_config(spec: str, size: str | None = None):
  """A config from a command-line spec.

  spec: 'KIND', 'KIND:SIZE' or 'path/to/config.py[:SIZE]'; size: used when the
  spec has none (default 'paper'). Raises ValueError for an unknown kind, size or
  unreadable file.
  """
  if spec.endswith(".py") or ".py:" in spec:
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_m2t_config", path)
    if module_spec is None:
      raise ValueError(f"Cannot load config file {path!r}.")
    module = importlib.util.module_from_spec(module_spec)
    try:
      module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of the file is "unreadable"
      raise ValueError(f"Cannot load config file {path!r}: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
      raise ValueError(f"Config file {path!r} defines no get_config(variant).")
    try:
      config = module.get_config(variant or size or "paper")
    except ValueError:
      raise
    except Exception as e:  # noqa: BLE001 - the file's own code failed
      raise ValueError(f"get_config of {path!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
      raise ValueError(f"get_config of {path!r} returned {type(config).__name__}, "
                       "not an ml_collections.ConfigDict.")
    return config
  kind, _, variant = spec.partition(":")
  return get_config(kind, variant or size or "paper")
