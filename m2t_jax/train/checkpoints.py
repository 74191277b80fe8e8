"""Orbax checkpoints of a training run, and stopping cleanly on SIGTERM.

A checkpoint (``workdir/checkpoints/STEP``) holds two items: 'state' (the
TrainState: params, optimizer state, step, skip counter; host numpy arrays) and
'data' (every host's grain iterator state, one JSON file per process).
"""

import json
import os
import signal
import threading

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from m2t_jax.train.state import TrainState


def checkpoint_manager(workdir: str, keep: int | None = None) -> ocp.CheckpointManager:
  """Orbax manager of ``workdir/checkpoints``: items 'state' and 'data'.

  keep: how many of the latest checkpoints to keep (None: all).
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "data": grain.checkpoint.CheckpointHandler()})


def load_checkpoint(workdir: str, step: int | None = None,
                    target: TrainState | None = None):
  """The saved train state of ``workdir`` (the latest step by default).

  Args:
    workdir: the training workdir.
    step: which checkpoint; None: the latest.
    target: a host TrainState to restore into (exact structure); None gives
      nested dicts ({'step', 'params', 'opt_state', 'num_skipped'}), enough for
      ``state['params']``.

  Raises:
    FileNotFoundError: ``workdir`` has no checkpoint.
  """
  manager = checkpoint_manager(workdir)
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {workdir!r}.")
    args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
    return manager.restore(step, args=ocp.args.Composite(state=args))["state"]
  finally:
    manager.close()


def latest_step(workdir: str) -> int | None:
  """The step of ``workdir``'s latest checkpoint, None when it has none (and
  then nothing is created in ``workdir``)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  manager = checkpoint_manager(workdir)
  try:
    return manager.latest_step()
  finally:
    manager.close()


def checkpoint_model(workdir: str, step: int | None = None):
  """(config, params) of a checkpoint for the codec (``Codec(config, params)``):
  the run's ``workdir/config.json`` and the checkpoint's params (the latest
  step by default), what ``export_model`` writes at the end of a run.

  Raises:
    FileNotFoundError: no config.json or no checkpoint in ``workdir``.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No config.json in {workdir!r}: not a training workdir.")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  return config, load_checkpoint(workdir, step)["params"]


class Preemption:
  """SIGTERM -> save and stop. Ask ``reached(step)`` after every step.

  One host: a Python signal handler sets a flag (installed only from the main
  thread, where Python allows it; ``close`` puts the previous handler back).
  Several hosts: JAX's preemption sync point, which the distributed runtime
  arms on SIGTERM, so that all hosts stop at the same step and save together.
  """

  def __init__(self):
    self._requested = False
    self._previous = None
    self._multihost = jax.process_count() > 1
    if not self._multihost and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after ``step`` (same answer on every host)."""
    if self._multihost:
      from jax.experimental import multihost_utils  # noqa: PLC0415
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError as e:  # no preemption service (not jax.distributed)
        logging.log_first_n(logging.WARNING, "No preemption sync on this run: %s", 1, e)
        return False
    return self._requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
