"""Encoder-side refinement settings compared photo by photo (real bytes).

    python -m experiments.refine_sweep --model grouped-small-l0.0025 \
        --images /tmp/val --only 037.png 038.png \
        --settings 30:0.005:rounded 30:0.005:continuous 30:0.01:continuous \
        --output-dir experiments/results --output-name refine_sweep

For each photo and each setting STEPS:LEARNING_RATE:RATE_TARGET (``RefineSettings``;
lambda: the model's), prints and saves the RD loss L = bpp + lambda * MSE (the
model's estimate, ``refine.rd_loss_fn``) of E's latent and of the refined one,
and the real bytes' bpp and the decoded image's PSNR-RGB of both, with the
encoding seconds (refinement included, compiled per photo size; the first
setting of each photo pays the compilation).
"""

import os
import time

import jax.numpy as jnp

from experiments import common
from m2t_jax import images, refine
from m2t_jax import model as model_lib
from m2t_jax.evaluation import metrics


def parse_setting(text: str) -> refine.RefineSettings:
  steps, lr, target = text.split(":")
  return refine.RefineSettings(steps=int(steps), learning_rate=float(lr), rate_target=target)


def measure(codec, image, settings) -> dict:
  h, w = image.shape[:2]
  t0 = time.perf_counter()
  y_hat = codec.analyze(image, refine=settings)
  data = codec.compress_latent(y_hat, h, w)
  seconds = time.perf_counter() - t0
  x = model_lib.pad_to_multiple(jnp.asarray(image, jnp.float32)[None])
  loss = refine.rd_loss_fn(codec.model, codec.params, x, h, w, float(codec.config.lmbda))
  return {"loss": float(loss(jnp.asarray(y_hat, jnp.float32))[1]),
          "bpp": 8 * len(data) / (h * w),
          "psnr-rgb": metrics.psnr_rgb(image, codec.decompress(data)),
          "encoding_s": seconds}


def build_parser():
  p = common.parser("refine_sweep", __doc__)
  common.add(p, "--model", default=None, detail="default: the default shipped model")
  common.add(p, "--images", required=True)
  common.add(p, "--only", nargs="+", default=None)
  common.add(p, "--settings", nargs="+", required=True)
  common.add_output(p, "refine_sweep")
  return p


def main(argv=None) -> int:
  args = common.parse(build_parser(), argv)
  codec = common.load_model(args.model)
  rows = []
  for path in common.image_paths(args):
    image, _ = images.read_rgb(path)
    plain = measure(codec, image, 0)
    for text in args.settings:
      refined = measure(codec, image, parse_setting(text))
      row = {"image": os.path.basename(path), "setting": text, "unrefined": plain,
             "refined": refined,
             "loss_change_pct": 100 * (refined["loss"] / plain["loss"] - 1),
             "bpp_change_pct": 100 * (refined["bpp"] / plain["bpp"] - 1),
             "psnr_change_db": refined["psnr-rgb"] - plain["psnr-rgb"]}
      rows.append(row)
      print(f"{row['image']} {text}: loss {row['loss_change_pct']:+.2f}%, bpp "
            f"{row['bpp_change_pct']:+.2f}%, PSNR {row['psnr_change_db']:+.3f} dB, "
            f"encode {refined['encoding_s']:.1f} s", flush=True)
  common.write_json(common.output_path(args, ".json"),
                    {"model": codec.name, "lmbda": float(codec.config.lmbda), "rows": rows},
                    args)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
