"""Training one part of a model on the latents of a frozen autoencoder.

``config.train_part`` picks what a run trains:

* ``'all'`` (default): the joint rate-distortion training of SPEC §1.
* ``'entropy'``: only the entropy model, on the latents y_hat = round(E(x)) of a
  fixed autoencoder, the one of ``config.init_from`` (a model folder or a shipped
  model's name; required). The latents of every training image *and of its
  left-right mirror* (E of the mirrored image, so the flip augmentation is exact
  rather than a mirrored latent, which E would not produce) are computed once when
  the run starts and cached in the workdir (with ``config.frozen_scales``, also
  of each image downscaled by those factors); each step draws random crops of
  crop_size / 16 latent cells, so no ELIC pass runs per step. The loss is the
  bits per pixel of those crops with y_hat itself as the target (exactly what the
  range coder pays; joint training pays for y + uniform noise instead).
* ``'decoder'``: only the synthesis transform D, on the same frozen y_hat: the
  loss is lambda * MSE (0..255) of D(y_hat) against the image crop at the same
  place (crops aligned to 16 pixels; the rate does not depend on D), scored
  ``config.decoder_margin`` cells inside the sides of the decoded latent window
  that lie inside the image (``LatentCrop`` says why).

Every other parameter is frozen: the optimizer gives it a zero update
(``optax.multi_transform`` with ``optax.set_to_zero``, no Adam moments), so it
stays bit-identical, and the warm start must have copied all of it from
``init_from`` (checked). Everything else is as for any run: the same absl
command line, orbax checkpoints with the grain iterator's position (resumes give
the batches an uninterrupted run would see), evaluation of the whole model on the
validation crops, and the exported model at the end. Because every kind trained
this way on the same ``init_from`` codes the same y_hat, their reconstructions
are identical and their real bytes alone rank them
(``experiments/entropy_benchmark.py``).
"""

import hashlib
import json
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from PIL import Image

from m2t_jax import model as model_lib
from m2t_jax import saved_model
from m2t_jax.evaluation import metrics
from m2t_jax.nn.elic import DOWNSCALE
from m2t_jax.train import data as data_lib

# train_part -> the top-level parameter collections it trains; and those that
# must come from init_from (everything the part reads but does not train).
TRAINED = {"all": None, "entropy": ("entropy_model",), "decoder": ("synthesis",)}
FROM_SOURCE = {"all": (), "entropy": ("analysis", "synthesis"),
               "decoder": ("analysis", "entropy_model")}
PARTS = tuple(TRAINED)


def part(config) -> str:
  return config.get("train_part", "all")


def config_problems(config) -> list[str]:
  """The impossible settings of the train_part fields (for validate_training_config)."""
  p = part(config)
  if p not in TRAINED:
    return [f"train_part={p!r} must be one of {PARTS}."]
  if p != "all" and not config.init_from:
    return [f"train_part={p!r} trains on the latents of a fixed autoencoder: set "
            "init_from to a model folder (a run's workdir/model) or a shipped model's "
            "name, whose autoencoder is used."]
  margin = config.get("decoder_margin", 0)
  if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
    return [f"decoder_margin={margin!r} must be an int >= 0 (latent cells)."]
  scales = tuple(config.get("frozen_scales", (1.0,)))
  if not scales or not all(isinstance(f, (int, float)) and not isinstance(f, bool)
                           and 0 < f <= 1 for f in scales) or len(set(scales)) < len(scales):
    return [f"frozen_scales={scales!r} must be distinct factors in (0, 1] (1.0: the "
            "image as is)."]
  return []


def adopt_source_lmbda(config) -> None:
  """Sets ``config.lmbda`` of a one-part run to its autoencoder's (init_from's).

  A one-part run's model has its source's rate-distortion trade-off: the entropy
  part's loss is bits only, and the decoder part's, lambda * MSE, has the same best
  D for any lambda (it only scales the loss). Without this the run's config, its
  exported model and everything that reads ``config.lmbda`` from it (refinement,
  ``ship_model.py``, a further one-part run warm-started from it) would carry the
  config file's default instead. A source that no longer resolves is left to the
  warm start to report (a resumed run does not need it).
  """
  if part(config) == "all" or not config.init_from:
    return
  try:
    folder = saved_model.locate(config.init_from)
  except FileNotFoundError:
    return
  with open(os.path.join(folder, "config.json")) as f:
    source = json.load(f)["lmbda"]
  if config.lmbda != source:
    logging.info("train_part=%r: lambda %g -> %g, the trade-off of init_from's "
                 "autoencoder.", part(config), config.lmbda, source)
    config.lmbda = source


def wrap_optimizer(config, optimizer: optax.GradientTransformation
                   ) -> optax.GradientTransformation:
  """``optimizer`` for the trained collections, zero updates for the rest."""
  trained = TRAINED[part(config)]
  if trained is None:
    return optimizer
  labels = lambda params: {k: jax.tree.map(lambda _, k=k: "train" if k in trained
                                           else "freeze", v)
                           for k, v in params.items()}
  return optax.multi_transform({"train": optimizer, "freeze": optax.set_to_zero()},
                               labels)


def in_collections(keystr_path: str, collections: tuple[str, ...]) -> bool:
  """Whether a keystr path ("['entropy_model']['...']") lies in one of ``collections``."""
  return any(keystr_path.startswith(f"['{c}']") for c in collections)


def check_warm_start(config, kept: list[str]) -> None:
  """ValueError if the warm start left a parameter this part needs from init_from
  (``kept``: keystr paths of the leaves not copied) at its initial value."""
  missing = [k for k in kept
             if in_collections(k, FROM_SOURCE[part(config)])]
  if missing:
    raise ValueError(
        f"train_part={part(config)!r} needs the autoencoder (and, for 'decoder', the "
        f"entropy model) of init_from={config.init_from!r}, but {len(missing)} of "
        f"those parameters have no match there (e.g. {missing[0]}): is it a model "
        "of another size?")


# --------------------------------------------------------------------------- #
# Latents, computed once.
# --------------------------------------------------------------------------- #


def _pad16(image: np.ndarray) -> np.ndarray:
  """Edge-pads (H, W, 3) to multiples of 16, as the codec does."""
  h, w, _ = image.shape
  return np.pad(image, ((0, -h % DOWNSCALE), (0, -w % DOWNSCALE), (0, 0)), mode="edge")


def compute_latents(config, params, images) -> list[np.ndarray]:
  """y_hat = round(E(x)) (h, w, C) int16 of each image and of its mirror, in the
  order image 0, mirror 0, image 1, ... (images: a sequence of uint8 (H, W, 3))."""
  model = model_lib.build_model(config)
  encode = jax.jit(lambda p, x: jnp.round(model.apply(
      {"params": p}, x, method=model_lib.CompressionModel.encode)))
  out = []
  for image in images:
    for view in (image, image[:, ::-1]):
      x = jnp.asarray(_pad16(np.ascontiguousarray(view))[None], jnp.float32)
      y = np.asarray(encode(params, x))[0]
      if np.abs(y).max(initial=0) > np.iinfo(np.int16).max:
        raise ValueError("A latent does not fit int16; is init_from a trained model?")
      out.append(y.astype(np.int16))
  return out


def scaled_images(images, scales) -> list[np.ndarray]:
  """Each of ``images`` (uint8 (H, W, 3)) downscaled by each factor of ``scales``
  (Lanczos; 1.0 keeps the image as is), edge-padded to multiples of 16, in the
  order image 0 at every scale, image 1 at every scale, ...; a factor that would
  leave a side under 16 pixels skips that image."""
  out = []
  for image in images:
    h, w, _ = image.shape
    for f in scales:
      size = (round(w * f), round(h * f))
      if f == 1:
        out.append(_pad16(image))
      elif min(size) >= DOWNSCALE:
        small = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)
        out.append(_pad16(np.asarray(small)))
  return out


def _digest(params, images, shard: int) -> str:
  """A key of E's parameters and the images' pixels (a different photo set or
  frozen_scales of the same count must not reuse a cache)."""
  h = hashlib.sha256(f"{len(images)}/{shard}".encode())
  for leaf in jax.tree.leaves(params["analysis"]):
    h.update(np.asarray(leaf).tobytes())
  for image in images:
    h.update(repr(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
  return h.hexdigest()[:16]


def cached_latents(config, params, images, workdir: str | None, shard: int
                   ) -> list[np.ndarray]:
  """``compute_latents``, cached in ``workdir`` under a digest of E's parameters
  and the images, so that a resumed run starts without recomputing."""
  path = None
  if workdir:
    path = os.path.join(workdir, f"frozen_latents_{_digest(params, images, shard)}.npz")
    if os.path.exists(path):
      with np.load(path) as f:
        return [f[f"y{i}"] for i in range(len(f.files))]
  latents = compute_latents(config, params, images)
  if path:
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{f"y{i}": y for i, y in enumerate(latents)})
    os.replace(tmp, path)
  logging.info("Latents of %d training images and their mirrors computed%s.",
               len(images), f" and cached in {path}" if path else "")
  return latents


def _pad_latent(y: np.ndarray, size: int) -> np.ndarray:
  h, w, _ = y.shape
  return np.pad(y, ((0, max(size - h, 0)), (0, max(size - w, 0)), (0, 0)),
                mode="symmetric")


class LatentCrop(grain.transforms.RandomMap):
  """(y_hat) -> a random crop of ``cells`` x ``cells`` latent cells; or (image,
  y_hat) -> (image crop, latent crop, scored) for the decoder part, where the
  latent window is ``cells + 2 * margin`` cells wide, the image crop is the 16x
  larger one at the same place and ``scored`` (uint8, the image crop's shape
  without channels) is 1 on the pixels the loss counts.

  Why a margin: D run on a latent crop sees zeros beyond the crop's sides, which
  full-image decoding never does inside an image: on the shipped default a
  16-cell crop decoded alone has ~32% more MSE than the full-image decode of the
  same pixels, and a loss on it trains D to repair borders that never occur
  (``experiments/decoder_crop_borders.py``: 1 cell inside the crop the excess is
  ~1%, from 2 cells on none). So the ``margin`` cells along every side of the
  window that lies inside the image are not scored; a side on the image's own
  edge is scored, as that border is real. Cells of padding (images smaller than
  the window) are never scored.
  """

  def __init__(self, cells: int, margin: int = 0):
    self.cells, self.margin = cells, margin

  def random_map(self, element, rng: np.random.Generator):
    image, y = element if isinstance(element, tuple) else (None, element)
    window = self.cells + (0 if image is None else 2 * self.margin)
    real_h, real_w = y.shape[:2]
    y = _pad_latent(y, window)
    h, w, _ = y.shape
    top, left = rng.integers(0, h - window + 1), rng.integers(0, w - window + 1)
    crop = np.ascontiguousarray(y[top:top + window, left:left + window])
    if image is None:
      return crop
    image = data_lib.pad_to_size(image, window * DOWNSCALE)
    s = DOWNSCALE
    image = np.ascontiguousarray(image[top * s:(top + window) * s,
                                       left * s:(left + window) * s])
    return image, crop, scored_mask(top, left, window, real_h, real_w, self.margin)


def scored_mask(top: int, left: int, window: int, real_h: int, real_w: int,
                margin: int) -> np.ndarray:
  """uint8 (window * 16, window * 16): 1 on the pixels of a latent window at
  (top, left) (cells) of a real_h x real_w-cell latent that the decoder's loss
  scores (``LatentCrop``)."""
  def span(start, real):
    first = margin if start > 0 else 0  # not scored unless on the image's edge
    end = min(window, real - start)  # cells beyond the image are padding
    last = end - margin if start + window < real else end
    return first * DOWNSCALE, max(last, first) * DOWNSCALE
  mask = np.zeros((window * DOWNSCALE,) * 2, np.uint8)
  (r0, r1), (c0, c1) = span(top, real_h), span(left, real_w)
  mask[r0:r1, c0:c1] = 1
  return mask


def latent_dataset(config, params, workdir: str | None = None,
                   shard: grain.sharding.ShardOptions | None = None,
                   source=None) -> grain.IterDataset:
  """The endless training stream of a frozen-autoencoder run, for this host.

  Elements: 'entropy': int16 (B_host, c, c, C) latent crops, c = crop_size / 16;
  'decoder': (uint8 (B_host, P, P, 3) images, int16 (B_host, c', c', C) latents,
  uint8 (B_host, P, P) scored pixels) with c' = c + 2 * config.decoder_margin and
  P = 16 c' (``LatentCrop``).
  params: the model's (its 'analysis' computes the latents). Images are shared
  between hosts by ``data.host_share``, as in ``data.train_dataset``.
  """
  shard = shard or data_lib.shard_options()
  ds = data_lib.image_source(config, "train") if source is None else source
  host_batch, mine = data_lib.host_share(config.batch_size, len(ds), shard)
  images = scaled_images([ds[i] for i in mine], tuple(config.get("frozen_scales", (1.0,))))
  latents = cached_latents(config, params, images, workdir, shard.shard_index)
  if part(config) == "decoder":
    # latents = image 0, mirror 0, image 1, ...: pair each with its pixels.
    views = [v for image in images for v in (image, np.ascontiguousarray(image[:, ::-1]))]
    elements = list(zip(views, latents, strict=True))
  else:
    elements = latents
  seed = int(np.random.SeedSequence([config.seed, shard.shard_index, 7])
             .generate_state(1)[0])
  ds = grain.MapDataset.source(elements).shuffle(seed=config.seed % 2**32).repeat()
  margin = config.get("decoder_margin", 0) if part(config) == "decoder" else 0
  ds = ds.random_map(LatentCrop(config.crop_size // DOWNSCALE, margin), seed=seed)
  return ds.to_iter_dataset().batch(host_batch, drop_remainder=True)


# --------------------------------------------------------------------------- #
# Losses.
# --------------------------------------------------------------------------- #


def loss_fn(config, model):
  """(params, batch, rng, lmbda) -> (loss, metrics {name: (B,)}) of this part,
  for ``train.step.make_train_step``."""
  pixels = (config.crop_size) ** 2

  def entropy(params, y_hat, rng, lmbda):
    del lmbda
    mask_rng, dropout_rng = jax.random.split(rng)
    y = y_hat.astype(jnp.float32)
    bits = model.apply({"params": params}, y, y, mask_rng, True,
                       method=model_lib.CompressionModel.latent_bits,
                       rngs={"dropout": dropout_rng})
    bpp = bits / pixels
    return jnp.mean(bpp), {"bpp": bpp}

  def decoder(params, batch, rng, lmbda):
    del rng, lmbda  # the warm-up of lambda only rescales this loss
    images, y_hat, scored = batch
    x_hat = model.apply({"params": params}, y_hat.astype(jnp.float32),
                        method=model_lib.CompressionModel.decode)
    x = images.astype(jnp.float32)
    weight = scored.astype(jnp.float32)[..., None]  # the scored pixels only
    count = jnp.maximum(3 * jnp.sum(weight, axis=(1, 2, 3)), 1)
    mse = jnp.sum(weight * jnp.square(x_hat - x), axis=(1, 2, 3)) / count
    clipped = jnp.sum(weight * jnp.square(jnp.clip(x_hat, 0, 255) - x),
                      axis=(1, 2, 3)) / count
    psnr = metrics.psnr_from_mse(clipped, min_mse=model_lib.MIN_MSE)
    return config.lmbda * jnp.mean(mse), {"mse": mse, "psnr": psnr}

  return {"entropy": entropy, "decoder": decoder}[part(config)]
