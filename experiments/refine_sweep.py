"""Encoder-side refinement settings compared photo by photo (real bytes).

    python experiments/refine_sweep.py --model grouped-small-l0.0025 \
        --images /tmp/val/037.png /tmp/val/038.png \
        --settings 30:0.005:rounded 30:0.005:continuous 30:0.01:continuous \
        --output experiments/results/refine_sweep.json

For each photo and each setting STEPS:LEARNING_RATE:RATE_TARGET (``RefineSettings``;
lambda: the model's), prints and saves the RD loss L = bpp + lambda * MSE (the
model's estimate, ``refine.rd_loss_fn``) of E's latent and of the refined one,
and the real bytes' bpp and the decoded image's PSNR-RGB of both, with the
encoding seconds (refinement included, compiled per photo size; the first
setting of each photo pays the compilation).
"""

import argparse
import json
import os
import sys
import time

import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from m2t_jax import Codec, images, refine  # noqa: E402
from m2t_jax import model as model_lib  # noqa: E402
from m2t_jax.evaluation import metrics  # noqa: E402


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


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default=None, help="shipped name or model folder")
  p.add_argument("--images", nargs="+", required=True)
  p.add_argument("--settings", nargs="+", required=True, help="STEPS:LR:RATE_TARGET")
  p.add_argument("--output", required=True)
  args = p.parse_args(argv)
  codec = Codec.load(args.model)
  rows = []
  for path in args.images:
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
  with open(args.output, "w") as f:
    json.dump({"model": codec.name, "lmbda": float(codec.config.lmbda), "rows": rows}, f,
              indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
