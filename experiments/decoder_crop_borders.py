"""How much worse D decodes a latent crop than the whole image, on the same pixels.

  python -m experiments.decoder_crop_borders --images VAL --only 035.png 037.png \
      [--model grouped-small-l0.0025] [--cells 16] [--margins 0 1 2 3 4] \
      [--output-dir out/decoder_crop_borders]

Decoder-only training (``--config.train_part=decoder``) runs D on latent crops of
the cached full-image y_hat. D then sees zeros beyond the crop's sides, which a
full-image decode never does inside the image. This measures the effect on a
trained model: for windows of ``cells`` x ``cells`` latent cells taken inside each
photo (4 cells away from its edges, on a grid), the MSE (0..255) of D(window)
against the photo, and of the full-image decode on the same pixels; both over the
whole window and over its interior without ``margin`` cells on each side. Where
the two agree, a loss on those pixels trains D for what full-image decoding gives
(``train/frozen.py``, ``config.decoder_margin``). Writes
``<output-dir>/decoder_crop_borders.json``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from m2t_jax import images as images_lib
from m2t_jax import model as model_lib


def measure(codec, image: np.ndarray, cells: int, margins) -> dict:
  model = model_lib.build_model(codec.config)
  decode = jax.jit(lambda y: model.apply({"params": codec.params}, y,
                                         method=model_lib.CompressionModel.decode))
  h, w = (image.shape[0] // 16) * 16, (image.shape[1] // 16) * 16
  x = image[:h, :w].astype(np.float32)  # whole cells only: no padding anywhere
  y = np.asarray(codec.analyze(image[:h, :w]), np.float32)
  y = y if y.ndim == 4 else y[None]  # (1, h / 16, w / 16, C)
  full = np.asarray(decode(jnp.asarray(y)))[0]
  sums = {m: {"window": 0.0, "full": 0.0} for m in margins}
  windows = 0
  for top in range(4, y.shape[1] - cells - 4 + 1, cells):
    for left in range(4, y.shape[2] - cells - 4 + 1, cells):
      alone = np.asarray(decode(jnp.asarray(y[:, top:top + cells, left:left + cells])))[0]
      rows = slice(16 * top, 16 * (top + cells))
      cols = slice(16 * left, 16 * (left + cells))
      for m in margins:
        inner = (slice(16 * m, 16 * (cells - m)),) * 2
        sums[m]["window"] += np.mean(np.square(alone[inner] - x[rows, cols][inner]))
        sums[m]["full"] += np.mean(np.square(full[rows, cols][inner] - x[rows, cols][inner]))
      windows += 1
  if windows == 0:
    raise ValueError(f"A {w}x{h} image has no {cells}-cell window 4 cells from its edges.")
  out = {"windows": windows, "by_margin": {}}
  for m in margins:
    window, whole = sums[m]["window"] / windows, sums[m]["full"] / windows
    out["by_margin"][str(m)] = {"mse_window_decoded_alone": float(window),
                                "mse_full_image_decode": float(whole),
                                "excess": float(window / whole - 1)}
  return out


def build_parser():
  p = common.parser("decoder_crop_borders", __doc__)
  common.add(p, "--images", required=True)
  common.add(p, "--only", nargs="+", default=None)
  common.add(p, "--model", default=None, detail="default: the default shipped model")
  common.add(p, "--cells", type=int, default=16)
  common.add(p, "--margins", type=int, nargs="+", default=[0, 1, 2, 3, 4])
  common.add_output(p, "decoder_crop_borders")
  return p


def main(argv=None):
  p = build_parser()
  args = common.parse(p, argv)
  if args.cells <= 2 * max(args.margins):
    p.error("--cells must exceed twice the largest margin")
  codec = common.load_model(args.model)
  report = {"model": args.model or "default", "cells": args.cells, "images": {}}
  for path in common.image_paths(args):  # keyed by path, e.g. VAL/035.png
    result = measure(codec, images_lib.load_image(path), args.cells, args.margins)
    report["images"][path] = result
    print(path, f"{result['windows']} windows:", ", ".join(
        f"margin {m}: {r['mse_window_decoded_alone']:.2f} vs {r['mse_full_image_decode']:.2f}"
        f" ({100 * r['excess']:+.1f}%)" for m, r in result["by_margin"].items()))
  common.write_json(common.output_path(args, ".json"), report, args)


if __name__ == "__main__":
  main()
