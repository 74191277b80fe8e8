"""M2T config. Usage: `--config=m2t_jax/configs/m2t.py:tiny` (paper | small | tiny)."""

from m2t_jax.configs import common


def get_config(size: str = "paper"):
  return common.get_base_config("m2t", size)
