"""Ship a trained model inside the package (m2t_jax/models) with its manifest entry.

  python -m experiments.ship_model --model /tmp/train/m2t_small \
      --name m2t-small-l0.0025 --images VAL_DIR --data "photos 001-034" \
      --hours HOURS --device "MACHINE" [--default] [--train-steps-before N]

  python -m experiments.ship_model --model SAVED_MODEL_DIR --name m2t-small-l0.006 \
      --train-steps N --images VAL_DIR --data ... --hours HOURS --device "MACHINE"

  python -m experiments.ship_model --remeasure m2t-small-l0.0025 --images VAL_DIR \
      --device "MACHINE"

Takes (``--model``) the latest checkpoint of a training workdir (its config.json
and orbax checkpoint, even when the run exported a model), or a saved model
folder (config.json + params.npz, as a GPU run brings back; its step count is
given with ``--train-steps``), stores the
parameters as float16 (codec.save_params), loads them back exactly as
``Codec.load`` does, and measures the validation images with real bytes
(``rd.evaluate_image``) on the images of ``--images``: per-image and mean bpp and
PSNR go into the manifest,
with the same figures for scikit-image's sample photos (for the regression test)
and the fingerprint of the shipped parameters.

A run that trained one part on a frozen autoencoder (``config.train_part`` =
entropy or decoder, e.g. a GroupedMixer entropy model on a shipped M2T's latents)
ships with the lambda of that autoencoder (``config.init_from``), which must still
resolve when this runs.

``--remeasure NAME`` measures an already shipped model again (after a change of
the container or the fingerprint: same weights, new bytes) and replaces only its
validation, sample and fingerprint fields, noting when and where.
"""

import json
import os

import ml_collections
import numpy as np

from experiments import common
from m2t_jax import Codec, get_config, model_source, models, saved_model, train
from m2t_jax.coding import bitstream
from m2t_jax.evaluation import rd


def _fill_missing(config, defaults, prefix="") -> list[str]:
  """Adds to ``config`` every field of ``defaults`` it lacks; returns their names."""
  added = []
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
      added.append(prefix + key)
    elif isinstance(value, ml_collections.ConfigDict):
      added += _fill_missing(config[key], value, f"{prefix}{key}.")
  return added


def _measure(codec, val_dir):
  """Real-bytes figures: per validation image, and on scikit-image's sample
  photos (for the regression test, tests/test_shipped.py, which cannot read
  VAL_DIR)."""
  from m2t_jax.app import demo  # noqa: PLC0415
  per_image = {}
  for item in rd.folder_images(val_dir):
    record = rd.evaluate_image(codec, item.load())
    per_image[item.name] = {k: record[k] for k in ("height", "width", "bpp", "estimated_bpp",
                                                   "psnr-rgb", "ms-ssim-rgb", "decoding_time")}
    print(item.name, per_image[item.name], flush=True)
  samples = {}
  for name, image in demo.sample_images():
    record = rd.evaluate_image(codec, image)
    samples[name] = {k: record[k] for k in ("bpp", "estimated_bpp", "psnr-rgb")}
    print(name, samples[name], flush=True)
  return per_image, samples


def _validation(per_image):
  return {"images": sorted(per_image),
          "bpp": float(np.mean([r["bpp"] for r in per_image.values()])),
          "psnr": float(np.mean([r["psnr-rgb"] for r in per_image.values()])),
          "per_image": per_image}


def remeasure(name, val_dir, device):
  """Measures the shipped model ``name`` again; updates its manifest entry."""
  import datetime  # noqa: PLC0415
  import jax  # noqa: PLC0415
  manifest = models.manifest()
  entry = manifest["models"][name]
  codec = Codec.load(name)
  per_image, samples = _measure(codec, val_dir)
  old_bpp = entry["validation"]["bpp"]
  entry.update(validation=_validation(per_image), samples=samples,
               fingerprint=codec.fingerprint.hex())
  entry["remeasured"] = (f"{datetime.date.today()}, {device or 'unnamed device'}, "
                         f"JAX {jax.__version__}, format version "
                         f"{bitstream.FORMAT_VERSION}")
  with open(models.MANIFEST, "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  print(f"{name}: validation {old_bpp:.5f} -> {entry['validation']['bpp']:.5f} bpp, "
        f"{entry['validation']['psnr']:.3f} dB, fingerprint {entry['fingerprint']}")


def build_parser():
  p = common.parser("ship_model", __doc__)
  common.add(p, "--model", default=None,
             detail="a training workdir (its latest checkpoint) or a saved-model folder")
  common.add(p, "--train-steps", type=int, default=0,
             detail="of a saved-model folder's run (a folder records none)")
  common.add(p, "--train-steps-before", type=int, default=0,
             detail="the manifest counts them in")
  common.add(p, "--name", default=None)
  common.add(p, "--remeasure", metavar="NAME", default=None,
             detail="no --model needed")
  common.add(p, "--images", required=True, detail="the validation images")
  common.add(p, "--data", default="")
  common.add(p, "--hours", type=float, default=None)
  common.add(p, "--device", default="")
  common.add(p, "--default", action="store_true")
  return p


def main(argv=None):
  parser = build_parser()
  args = common.parse(parser, argv)
  if args.remeasure:
    return remeasure(args.remeasure, args.images, args.device)
  if not (args.model and args.name):
    parser.error("--model and --name are required (or --remeasure NAME)")
  source = model_source.resolve(args.model)
  if source.form not in ("folder", "workdir-model", "workdir-checkpoint"):
    parser.error(f"--model {args.model!r}: a training workdir or a saved-model folder "
                 f"is shipped, not a {source.form} model")
  workdir = source.spec if source.form.startswith("workdir") else None

  with open(os.path.join(workdir or source.path, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  # Fields added to the code after the run started (e.g. gmm.narrow_radius)
  # take today's defaults for its model and size; the evaluation below measures
  # the model as shipped, with them.
  added = _fill_missing(config, get_config(config.model, config.size))
  if added:
    print("config fields missing in the workdir, set to today's defaults:", added)
  frozen_run = config.get("train_part", "all") != "all"
  if frozen_run:
    # This run trained one part (the entropy model or the decoder) on the frozen
    # autoencoder of init_from: the shipped model's rate-distortion trade-off is that
    # autoencoder's lambda (the run's own lmbda field was unused or only scaled the
    # loss), so the config and manifest carry the source's.
    with open(os.path.join(saved_model.locate(config.init_from), "config.json")) as f:
      source_lmbda = json.load(f)["lmbda"]
    print(f"{config.train_part} trained on the frozen autoencoder of {config.init_from}: "
          f"lambda {config.lmbda} -> {source_lmbda}")
    config.lmbda = source_lmbda
  if workdir is None:
    _, params = saved_model.load_params(source.path)
    state = {"params": params, "step": args.train_steps}
  else:
    state = train.load_checkpoint(workdir)
  folder = args.name.replace(".", "_")
  path = os.path.join(models.MODELS_DIR, folder)
  saved_model.save_params(path, config, state["params"], dtype=np.float16)
  codec = Codec.load(path)
  per_image, samples = _measure(codec, args.images)
  if config.get("init_from"):
    print(f"warm-started from {config.init_from}: {args.train_steps_before} steps counted "
          f"before this run's {int(state['step'])} (--train-steps-before)")
  entry = {
      "kind": config.model, "size": config.size, "lmbda": config.lmbda,
      "training_steps": args.train_steps_before + int(state["step"]),
      "training_hours": args.hours,
      "device": args.device, "data": args.data, "folder": folder,
      "validation": _validation(per_image),
      "samples": samples,
      "fingerprint": codec.fingerprint.hex(),
  }
  if config.get("init_from"):
    entry["warm_started_from"] = {"model": config.init_from, "steps": args.train_steps_before}
  if frozen_run:
    entry["train_part"] = config.train_part  # the rest is init_from's, frozen
  manifest = models.manifest()
  manifest.setdefault("models", {})[args.name] = entry
  if args.default or not manifest.get("default"):
    manifest["default"] = args.name
  with open(models.MANIFEST, "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
  print(json.dumps({k: v for k, v in entry.items() if k != "validation"}, indent=1))
  print("validation:", entry["validation"]["bpp"], "bpp", entry["validation"]["psnr"], "dB")


if __name__ == "__main__":
  main()
