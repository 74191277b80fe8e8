"""Progressive decoding of one image (paper Fig. 6, and beyond it).

  python -m experiments.progressive --model m2t-small-l0.0025 --image photo.png \
      [--output-dir out/progressive] [--output-name progressive]

For k = 0..S: the image decoded from the first k groups of a real stream
(``Codec.decompress(data, num_steps=k)``; later tokens are predicted mixture
means), its PSNR and the bits of the first k groups; and the per-token predicted
entropy (bits, summed over channels) of the tokens not yet decoded: each is the
entropy of the table its group would be coded with, when the steps run on from
step k fed with predicted means. Also the schedule's group map of one patch.
Writes JSON and a PNG figure (rows: reconstructions, entropy maps; and the
group map), ``<output-name>.json`` and ``.png`` in ``--output-dir``.
"""

import json

import jax.numpy as jnp
import numpy as np

from experiments import common
from m2t_jax import Codec, images
from m2t_jax.evaluation import metrics
from m2t_jax.coding.steps import CodingLoop
from m2t_jax.entropy import gmm, patches, schedules


def entropy_map(codec: Codec, image: np.ndarray, k: int) -> np.ndarray:
  """Per-token predicted entropy (h, w) in bits after decoding k groups (0 if decoded)."""
  config = codec.config
  y_hat = codec.analyze(image)
  _, h, w, _ = y_hat.shape
  tokens, valid = patches.to_patches(jnp.asarray(y_hat, jnp.float32), config.patch_size)
  tokens, valid = np.asarray(tokens), np.asarray(valid)
  entropy = np.zeros(valid.shape)
  loop = CodingLoop(codec.entropy_coder.scheduled(), codec.params["entropy_model"], config, valid)
  for step in loop:
    if step.index < k:
      values = step.take(tokens)
    else:  # bits per element of this step's channels, summed into its cells
      bits = np.asarray(jnp.sum(gmm.table_entropy_bits(step.pmf), -1))
      np.add.at(entropy, (np.arange(len(step.cells))[:, None], step.cells), bits)
      values = np.asarray(gmm.mixture_mean(step.mixture))
    step.feed(values)
  entropy = np.where(valid, entropy, 0.0)
  return np.asarray(patches.from_patches(entropy[..., None], 1, h, w, config.patch_size))[0, ..., 0]


def group_map(config) -> np.ndarray | None:
  if config.schedule.order == "entropy":
    return None
  sched = schedules.make_schedule(config.patch_size, config.schedule.num_steps,
                                  config.schedule.alpha, config.schedule.order,
                                  config.schedule.seed)
  groups = np.zeros(config.patch_size**2, int)
  groups[sched.order] = schedules.group_ids(sched.sizes)
  return groups.reshape(config.patch_size, config.patch_size)


def build_parser():
  p = common.parser("progressive", __doc__)
  common.add(p, "--model", default=None, detail="default: the default shipped model")
  common.add(p, "--image", default=None, detail="default: skimage's astronaut")
  common.add_output(p, "progressive")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  codec = common.load_model(args.model)
  if args.image:
    image = images.read_rgb(args.image)[0]
  else:
    from skimage import data
    image = data.astronaut()
  stream = codec.compress(image)
  steps = codec.config.schedule.num_steps
  recons, maps, records = [], [], []
  for k in range(steps + 1):
    recon = codec.decompress(stream, num_steps=k)
    ent = entropy_map(codec, image, k)
    recons.append(recon)
    maps.append(ent)
    records.append({"k": k, "psnr": metrics.psnr_rgb(image, recon),
                    "remaining_entropy_bits": float(ent.sum())})
    print(json.dumps(records[-1]))
  out = {"model": codec.name, "bytes": len(stream), "image_shape": list(image.shape),
         "records": records}
  common.write_json(common.output_path(args, ".json"), out, args)
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return
  gmap = group_map(codec.config)
  cols = steps + 1 + (gmap is not None)
  fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols, 3.4), squeeze=False)
  vmax = max(m.max() for m in maps) or 1.0
  for k in range(steps + 1):
    axes[0][k].imshow(recons[k])
    axes[0][k].set_title(f"k={k}\n{records[k]['psnr']:.1f} dB", fontsize=7)
    axes[1][k].imshow(maps[k], cmap="magma", vmin=0, vmax=vmax)
  if gmap is not None:
    axes[0][-1].imshow(gmap, cmap="viridis")
    axes[0][-1].set_title("groups", fontsize=7)
    axes[1][-1].axis("off")
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(common.output_path(args, ".png"), dpi=130)


if __name__ == "__main__":
  main()
