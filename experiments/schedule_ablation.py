"""Schedule ablation (paper Fig. 5): MT's real coding cost vs alpha, S and order.

  python -m experiments.schedule_ablation --model mt-small-l0.0025 --images DIR \
      [--output-dir out/schedule_ablation] [--output-name schedule_ablation]

For an MT model (``--model``: e.g. a shipped MT, or ``mt:small`` for random
weights), every alpha in --alphas, S in --decode-steps and order in --orders
(qlds, random, entropy): the bits of y_hat under the S decode passes, i.e. what
the range coder pays up to table quantisation (``Codec.estimate`` for MT), as bpp
averaged over the images. MT is trained with random masks, so one model serves
every schedule. Writes JSON, a markdown table (.md) and a PNG plot (.png).
"""

import json
import sys

import ml_collections
import numpy as np

from experiments import common
from m2t_jax import Codec


def _sample_images(max_images):
  from skimage import data
  return [(name, getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea")][
      :max_images]


def run(base: Codec, imgs, alphas, steps_list, orders):
  records = []
  pixels = sum(im.shape[0] * im.shape[1] for _, im in imgs)
  for order in orders:
    for steps in steps_list:
      for alpha in alphas:
        config = ml_collections.ConfigDict(base.config.to_dict())
        config.schedule.order, config.schedule.num_steps, config.schedule.alpha = (
            order, steps, alpha)
        codec = Codec(config, base.params)
        bits = sum(codec.estimate(im)["bits"] for _, im in imgs)
        records.append({"order": order, "steps": steps, "alpha": alpha, "bpp": bits / pixels})
        print(json.dumps(records[-1]), file=sys.stderr, flush=True)
  return records


def _markdown(records, alphas):
  lines = ["| order | S | " + " | ".join(f"alpha={a}" for a in alphas) + " |",
           "|---|---|" + "---|" * len(alphas)]
  keys = sorted({(r["order"], r["steps"]) for r in records})
  for order, steps in keys:
    row = {r["alpha"]: r["bpp"] for r in records if (r["order"], r["steps"]) == (order, steps)}
    lines.append(f"| {order} | {steps} | " + " | ".join(f"{row[a]:.4f}" for a in alphas) + " |")
  return "\n".join(lines)


def _plot(records, path):
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return
  orders = sorted({r["order"] for r in records})
  fig, axes = plt.subplots(1, len(orders), figsize=(4 * len(orders), 3.2), sharey=True,
                           squeeze=False)
  for ax, order in zip(axes[0], orders, strict=True):
    for steps in sorted({r["steps"] for r in records}):
      rs = sorted((r for r in records if r["order"] == order and r["steps"] == steps),
                  key=lambda r: r["alpha"])
      ax.plot([r["alpha"] for r in rs], [r["bpp"] for r in rs], "o-", label=f"S={steps}")
    ax.set_title(order)
    ax.set_xlabel("alpha")
  axes[0][0].set_ylabel("bpp (MT, S passes)")
  axes[0][-1].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def build_parser():
  p = common.parser("schedule_ablation", __doc__)
  common.add(p, "--model", default="mt", detail="an MT model")
  common.add(p, "--images", default=None, detail="default: skimage's sample photos")
  common.add(p, "--max-images", type=int, default=8)
  common.add(p, "--alphas", type=float, nargs="+", default=[1.0, 1.5, 2.2, 3.0, 4.0])
  common.add(p, "--decode-steps", type=int, nargs="+", default=[2, 4, 8, 12])
  common.add(p, "--orders", nargs="+", default=["qlds", "random", "entropy"])
  common.add_output(p, "schedule_ablation")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  base = common.load_model(args.model, kind="mt")  # M2T is trained for one schedule
  imgs = common.load_images(args) if args.images else _sample_images(args.max_images)
  records = run(base, imgs, args.alphas, args.decode_steps, args.orders)
  common.write_json(common.output_path(args, ".json"),
                    {"model": base.name, "images": [n for n, _ in imgs], "records": records},
                    args)
  table = _markdown(records, args.alphas)
  with open(common.output_path(args, ".md"), "w") as f:
    f.write(table + "\n")
  _plot(records, common.output_path(args, ".png"))
  print(table)
  return np.mean([r["bpp"] for r in records])


if __name__ == "__main__":
  main()
