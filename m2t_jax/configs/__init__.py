"""ml_collections configs, one file per model kind: ``get_config(model, size)``.

``load_config('m2t', 'tiny')``, ``load_config('m2t:tiny')`` or
``load_config('m2t_jax/configs/mt.py:small')`` for specs given on a command line.
"""

import importlib.util


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
    except FileNotFoundError as e:
      raise ValueError(f"Cannot load config file {path!r}: {e}") from e
    return module.get_config(variant or size or "paper")
  kind, _, variant = spec.partition(":")
  return get_config(kind, variant or size or "paper")
