"""Parameter counts of a config, per part (no weights are allocated).

``python -m m2t_jax.app.summary m2t paper``, ``m2t summary m2t:paper`` or
``m2t summary m2t_jax/configs/mt.py:small``.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax import configs
from m2t_jax import model as model_lib
from m2t_jax.entropy import registry
from m2t_jax.nn.elic import DOWNSCALE

PARTS = ("encoder", "decoder", "embedding", "transformer", "head")


def param_counts(config) -> dict:
  """{part: number of parameters} for encoder, decoder, embedding, transformer,
  head, and total. Shapes only, via ``jax.eval_shape``.

  The entropy model's 'transformer' subtree and every subtree whose name has
  'head' in it (a nested model's exit heads too) are counted when the kind has
  them; all its other parameters count as 'embedding'.
  """
  model = model_lib.build_model(config)
  size = DOWNSCALE * config.patch_size  # one patch of latent
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))["params"]
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  entropy = dict(shapes["entropy_model"])
  counts = {"encoder": count(shapes["analysis"]), "decoder": count(shapes["synthesis"])}
  if "transformer" in entropy:
    counts["transformer"] = count(entropy.pop("transformer"))
  heads = [name for name in entropy if "head" in name]  # head, exit_heads_0, ...
  if heads:
    counts["head"] = count([entropy.pop(name) for name in heads])
  counts["embedding"] = count(entropy)
  counts = {part: counts[part] for part in PARTS if part in counts}
  counts["total"] = sum(counts.values())
  return counts


def format_summary(config) -> str:
  """A human-readable summary: the main config fields and the parameter counts."""
  t = config.transformer
  # S from the kind's coding plan: a kind may not follow schedule.num_steps.
  num_steps = len(registry.build(config).coding_plan())
  lines = [
      f"model {config.model} / size {config.size}",
      f"  ELIC N={config.elic.num_filters} C={config.latent_channels}; transformer "
      f"{t.num_layers}x{t.d_model}, {t.num_heads} heads, MLP {t.mlp_dim}",
      f"  w_T={config.patch_size} S={num_steps} "
      f"alpha={config.schedule.alpha} order={config.schedule.order} "
      f"N_M={config.gmm.num_mixtures} delta={config.embed_delta}",
      f"  lambda={config.lmbda} batch={config.batch_size}x{config.crop_size}^2 "
      f"steps={config.num_steps} lr={config.learning_rate}",
      "  parameters:",
  ]
  for part, n in param_counts(config).items():
    lines.append(f"    {part:<12}{n:>14,d}  ({n / 1e6:.2f}M)")
  return "\n".join(lines)


def main(argv=None) -> int:
  """``python -m m2t_jax.app.summary CONFIG [SIZE]``; 1 on a bad config, 2 on usage."""
  args = sys.argv[1:] if argv is None else argv
  if not args or len(args) > 2:
    print(__doc__)
    return 2
  try:
    config = configs.load_config(args[0], args[1] if len(args) > 1 else None)
  except ValueError as e:
    print(f"m2t summary: error: {e}", file=sys.stderr)
    return 1
  print(format_summary(config))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
