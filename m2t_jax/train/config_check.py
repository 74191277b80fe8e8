"""``validate_training_config``: every impossible training setting, at once.

Run before anything is built or read, so that a bad command line fails in a
second with the full list, rather than after compilation with the first error.
"""

import jax
import ml_collections

from m2t_jax import model as model_lib
from m2t_jax.evaluation import splits
from m2t_jax.nn.elic import DOWNSCALE
from m2t_jax.train import data as data_lib
from m2t_jax.train import frozen


def validate_training_config(config: ml_collections.ConfigDict,
                             num_devices: int | None = None,
                             num_processes: int | None = None) -> None:
  """Raises ValueError listing every impossible setting of a training config.

  Args:
    config: the full config (model, optimisation and data fields).
    num_devices: devices taking part in training (default jax.device_count()).
    num_processes: hosts (default jax.process_count()).

  Raises:
    ValueError: one line per problem, after the model's own checks
      (``model.validate_config``).
  """
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  errors = []
  try:
    model_lib.validate_config(config)
  except ValueError as e:
    errors.append(str(e))
  if config.batch_size < 1 or config.batch_size % num_devices:
    errors.append(
        f"batch_size={config.batch_size} cannot be split evenly over {num_devices} "
        f"devices ({num_processes} host(s)): use a positive multiple of {num_devices}.")
  # The entropy model works on patch_size x patch_size patches of the latent,
  # which is 1/DOWNSCALE of the image in each dimension.
  # (patch_size < 1 is reported by model.validate_config above.)
  unit = DOWNSCALE * config.patch_size
  if unit >= 1 and (config.crop_size < unit or config.crop_size % unit):
    errors.append(
        f"crop_size={config.crop_size} must be a positive multiple of 16 * patch_size"
        f" = {unit} for model {config.model!r}: a crop must be whole {config.patch_size}"
        f"x{config.patch_size} patches of the latent (1/16 of the image).")
  if config.num_steps < 1:
    errors.append(f"num_steps={config.num_steps} must be >= 1.")
  if config.warmup_steps < 0:
    errors.append(f"warmup_steps={config.warmup_steps} must be >= 0.")
  if not 0 < config.lr_drop_fraction <= 1:
    errors.append(f"lr_drop_fraction={config.lr_drop_fraction} must be in (0, 1] "
                  "(1: never drop).")
  if not config.learning_rate > 0:
    errors.append(f"learning_rate={config.learning_rate} must be > 0.")
  if not (0 <= config.adam_b1 < 1 and 0 <= config.adam_b2 < 1 and config.adam_eps > 0):
    errors.append("Need 0 <= adam_b1, adam_b2 < 1 and adam_eps > 0.")
  if config.weight_decay < 0 or not config.grad_clip_norm > 0:
    errors.append("Need weight_decay >= 0 and grad_clip_norm > 0.")
  if not config.lmbda > 0 or not 0 <= config.lmbda_warmup_fraction <= 1:
    errors.append("Need lmbda > 0 and 0 <= lmbda_warmup_fraction <= 1.")
  for field in ("checkpoint_every", "keep_checkpoints", "log_every", "eval_batch_size"):
    if config[field] < 1:
      errors.append(f"{field}={config[field]} must be >= 1.")
  if config.eval_every < 0:
    errors.append(f"eval_every={config.eval_every} must be >= 0 (0: only at the end).")
  d = config.data
  if d.source not in data_lib.SOURCES:
    errors.append(f"data.source={d.source!r} must be one of {data_lib.SOURCES}.")
  elif d.source == "folder" and not d.train_dir:
    errors.append("data.source='folder' needs data.train_dir (a folder of PNG/JPEG "
                  "images, searched recursively).")
  elif d.source == "tfds" and not d.tfds_name:
    errors.append("data.source='tfds' needs data.tfds_name (an array_record TFDS "
                  "dataset).")
  for field in ("split", "val_split"):
    if d.get(field, "all") not in splits.CHOICES:
      errors.append(f"data.{field}={d.get(field)!r} must be one of {splits.CHOICES} "
                    "(the files of a folder's fixed split: m2t_jax.evaluation.splits).")
  max_bad = d.get("max_unreadable_fraction", 0.0)
  if isinstance(max_bad, bool) or not isinstance(max_bad, (int, float)) or not (
      0 <= max_bad <= 1):
    errors.append(f"data.max_unreadable_fraction={max_bad!r} must be a number in "
                  "[0, 1].")
  errors += frozen.config_problems(config)
  if d.num_workers < 0:
    errors.append(f"data.num_workers={d.num_workers} must be >= 0.")
  if errors:
    raise ValueError("Invalid training config:\n  - " + "\n  - ".join(errors))
