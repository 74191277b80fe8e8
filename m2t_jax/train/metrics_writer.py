"""Training metrics out: absl log lines, ``workdir/metrics.jsonl``, TensorBoard.

Records are dicts {"type": "train"|"eval", "step": completed steps, ...}; see
``m2t_jax.train`` for their fields.
"""

import json
import os

import numpy as np
from absl import logging


class MetricWriter:
  """workdir/metrics.jsonl (one JSON record a line, flushed at once, so that
  a killed run keeps its lines) + optional TensorBoard; host 0 only (the
  others pass enabled=False and write nothing)."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    self._tb = None
    self._file = None
    if not enabled:
      return
    # Append: a resumed run continues the file of the interrupted one.
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
    self._tb = _tensorboard_writer(os.path.join(workdir, "tensorboard"))

  def write(self, record: dict):
    if not self.enabled:
      return
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      prefix = record["type"]
      for k, v in record.items():
        if isinstance(v, float | int) and k not in ("step", "type"):
          self._tb(f"{prefix}/{k}", v, record["step"])

  def close(self):
    if self._file is not None:
      self._file.close()
      self._file = None


def _tensorboard_writer(logdir: str):
  """A (tag, value, step) -> None scalar writer, or None without TensorBoard."""
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
    writer = SummaryWriter(logdir)
    return writer.add_scalar
  except ImportError:
    pass
  try:
    from flax.metrics import tensorboard  # noqa: PLC0415 - needs TensorFlow
    writer = tensorboard.SummaryWriter(logdir)
    return writer.scalar
  except ImportError:
    logging.info("No TensorBoard writer (install tensorboardX); metrics go to "
                 "metrics.jsonl only.")
    return None


def summarise(window: list[dict]) -> dict:
  """Means of the finite steps of a window of per-step metrics (host values).

  Returns loss, bpp, mse, psnr, grad_norm (None when no step was finite; bpp,
  mse and psnr only where the steps report them: a frozen-autoencoder run trains
  the rate or the distortion alone), the last step's lmbda and lr, and
  nonfinite_steps (skipped updates in the window).
  """
  finite = [m for m in window if bool(m["finite"])]
  out = {}
  for k in ("loss", "bpp", "mse", "psnr", "grad_norm"):
    if k in window[0]:
      out[k] = float(np.mean([float(m[k]) for m in finite])) if finite else None
  out["lmbda"] = float(window[-1]["lmbda"])
  out["lr"] = float(window[-1]["lr"])
  out["nonfinite_steps"] = len(window) - len(finite)
  return out


def format_eta(seconds: float) -> str:
  """Seconds -> '1h02m03s'."""
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


def log_train_record(record: dict, num_steps: int) -> None:
  """The absl log line(s) of a train record (``summarise`` + step, speed)."""
  step = record["step"]
  if record["nonfinite_steps"]:
    logging.warning("%d step(s) up to step %d had a non-finite loss or gradient: "
                    "updates skipped (%d in total).", record["nonfinite_steps"], step,
                    record["skipped_total"])
  if record["loss"] is not None:
    rate = f" bpp {record['bpp']:.4f}" if "bpp" in record else ""
    psnr = f" PSNR {record['psnr']:.2f} dB" if "psnr" in record else ""
    logging.info(
        "step %d/%d: loss %.4f%s%s lambda %.4g lr %.3g grad_norm %.3g | %.2f steps/s, "
        "ETA %s", step, num_steps, record["loss"], rate, psnr, record["lmbda"],
        record["lr"], record["grad_norm"], record["steps_per_sec"],
        format_eta(record["eta_s"]))
