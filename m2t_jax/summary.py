"""Parameter counts of a config, per part (no weights are allocated).

``python -m m2t_jax.summary m2t paper`` or ``m2t summary m2t_jax/configs/mt.py:small``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax import model as model_lib

PARTS = ("encoder", "decoder", "embedding", "transformer", "head")


def param_counts(config) -> dict:
  """{part: number of parameters} for encoder, decoder, embedding, transformer,
  head, and total. Shapes only, via ``jax.eval_shape``."""
  model = model_lib.build_model(config)
  size = 16 * config.patch_size
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))["params"]
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
  entropy = dict(shapes["entropy_model"])
  counts = {
      "encoder": count(shapes["analysis"]),
      "decoder": count(shapes["synthesis"]),
      "transformer": count(entropy.pop("transformer")),
      "head": count(entropy.pop("head")),
  }
  counts["embedding"] = count(entropy)
  counts = {part: counts[part] for part in PARTS}
  counts["total"] = sum(counts.values())
  return counts


def format_summary(config) -> str:
  """A human-readable summary: the main config fields and the parameter counts."""
  t = config.transformer
  lines = [
      f"model {config.model} / size {config.size}",
      f"  ELIC N={config.elic.num_filters} C={config.latent_channels}; transformer "
      f"{t.num_layers}x{t.d_model}, {t.num_heads} heads, MLP {t.mlp_dim}",
      f"  w_T={config.patch_size} S={config.schedule.num_steps} "
      f"alpha={config.schedule.alpha} order={config.schedule.order} "
      f"N_M={config.gmm.num_mixtures} delta={config.embed_delta}",
      f"  lambda={config.lmbda} batch={config.batch_size}x{config.crop_size}^2 "
      f"steps={config.num_steps} lr={config.learning_rate}",
      "  parameters:",
  ]
  for part, n in param_counts(config).items():
    lines.append(f"    {part:<12}{n:>14,d}  ({n / 1e6:.2f}M)")
  return "\n".join(lines)


def load_config(spec: str, size: str | None = None):
  """'m2t', 'paper' | 'path/to/m2t.py:paper' -> ConfigDict."""
  from m2t_jax import configs  # noqa: PLC0415
  if spec.endswith(".py") or ".py:" in spec:
    import importlib.util  # noqa: PLC0415
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_m2t_config", path)
    if module_spec is None:
      raise ValueError(f"Cannot load config file {path!r}.")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant or size or "paper")
  return configs.get_config(spec, size or "paper")


def main(argv=None):
  import sys  # noqa: PLC0415
  args = sys.argv[1:] if argv is None else argv
  if not args:
    print(__doc__)
    return 2
  print(format_summary(load_config(args[0], args[1] if len(args) > 1 else None)))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
