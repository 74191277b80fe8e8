"""ml_collections configs: ``get_config(model, size)``."""

from m2t_jax.configs import common


def get_config(model: str = "m2t", size: str = "paper"):
  """Python shortcut for ``m2t_jax/configs/{model}.py:{size}``."""
  return common.get_base_config(model, size)
