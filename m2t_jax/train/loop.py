"""The training loop (``train_and_evaluate``), the model export at its end, and
multi-host start-up. The behaviour is documented in ``m2t_jax.train``."""

import json
import os
import time

import flax.jax_utils
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from m2t_jax import model as model_lib
from m2t_jax.train import data as data_lib
from m2t_jax.train import frozen
from m2t_jax.train.checkpoints import Preemption, checkpoint_manager
from m2t_jax.train.config_check import validate_training_config
from m2t_jax.train.metrics_writer import MetricWriter, log_train_record, summarise
from m2t_jax.train.optim import make_optimizer
from m2t_jax.train.state import TrainState, create_train_state, warm_start_params
from m2t_jax.train.step import AXIS, evaluate, make_eval_step, make_train_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) to config.num_steps; returns what it ended with.

  Args:
    config: a training config (``m2t_jax.configs``); checked first by
      ``validate_training_config``.
    workdir: checkpoints, logs, metrics and the exported model go here; a
      workdir with checkpoints is resumed from the latest one.

  Returns:
    {'state': host TrainState (numpy), 'step': int, 'preempted': bool,
     'train_metrics': the last logged train record or None,
     'eval_metrics': the last evaluation record or None}.
  """
  validate_training_config(config)
  frozen.adopt_source_lmbda(config)  # a one-part run's model has its source's lambda
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  chief = jax.process_index() == 0
  num_local = jax.local_device_count()
  logging.info("Training %s/%s on %d device(s), %d host(s); workdir %s",
               config.model, config.size, jax.device_count(), jax.process_count(),
               workdir)
  if chief:  # the config of the run, for exporting any of its checkpoints later
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config.to_dict(), f, indent=1, sort_keys=True)

  # The images first: a folder with nothing readable ends the run in seconds,
  # not after compilation. Unreadable files are skipped and counted.
  train_images = data_lib.image_source(config, "train")
  val_images = data_lib.eval_images(config)
  model = model_lib.build_model(config)
  optimizer = make_optimizer(config)
  manager = checkpoint_manager(workdir, config.keep_checkpoints)
  host_state, resumed = _initial_state(config, optimizer, manager)
  # A frozen-autoencoder run's stream needs the autoencoder (train.frozen).
  train_iter = iter(data_lib.train_dataset(config, source=train_images)
                    if frozen.part(config) == "all"
                    else frozen.latent_dataset(config, host_state.params, workdir,
                                               source=train_images))
  if resumed is not None:
    manager.restore(resumed, args=ocp.args.Composite(
        data=grain.checkpoint.CheckpointRestore(train_iter)))
  step = int(host_state.step)
  logging.info("Parameters: %d",
               sum(int(np.prod(x.shape)) for x in jax.tree.leaves(host_state.params)))

  # Replicated on a mesh axis named like the pmap axis: the pmap outputs carry
  # that sharding, and any other input sharding would compile the step twice.
  state = flax.jax_utils.replicate(host_state, axis_name=AXIS)
  p_train_step = jax.pmap(make_train_step(config, model, optimizer), axis_name=AXIS,
                          in_axes=(0, 0, None), donate_argnums=(0,))
  eval_step = make_eval_step(config, model) if val_images is not None else None
  # A new-style typed key; pmap passes it to every device unchanged (in_axes
  # None). Folded with 1 because 0 is the stream of the parameter init.
  key = jax.random.fold_in(jax.random.key(config.seed), 1)
  writer = MetricWriter(workdir, chief)
  preemption = Preemption()

  def host_state_now() -> TrainState:
    return jax.device_get(jax.tree.map(lambda x: x[0], state))

  def save(at_step: int):
    if at_step in manager.all_steps():
      return
    manager.save(at_step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(host_state_now()),
        data=grain.checkpoint.CheckpointSave(train_iter)))

  def run_eval(at_step: int) -> dict:
    params = jax.tree.map(lambda x: x[0], state.params)
    record = {"type": "eval", "step": at_step,
              **evaluate(config, eval_step, params, val_images)}
    one_pass = (f" (one pass: {record['bpp_one_pass']:.4f})"
                if "bpp_one_pass" in record else "")
    logging.info("eval step %d: bpp %.4f%s PSNR %.2f dB loss %.4f (%d images)", at_step,
                 record["bpp"], one_pass, record["psnr"], record["loss"],
                 record["num_images"])
    writer.write(record)
    return record

  window: list = []  # per-step metrics (on device) since the last log line
  train_record = eval_record = None
  preempted = False
  window_start, window_step = time.time(), step
  first_step = step
  try:
    while step < config.num_steps:
      # (batch_size / num_hosts, crop, crop, 3) uint8, or a frozen part's batch
      batch = jax.tree.map(lambda a: a.reshape(num_local, -1, *a.shape[1:]),
                           next(train_iter))
      state, metrics = p_train_step(state, batch, key)
      step += 1
      window.append(metrics)
      # JAX dispatches asynchronously: unbounded, this loop runs ahead of the
      # device (8 steps on CPU, measured), and a SIGTERM, which only this loop
      # sees, then waits for that backlog: with steps of seconds on busy cores,
      # longer than a scheduler's grace period. One step in flight still
      # overlaps the next batch's preparation with the device.
      if len(window) >= 2:
        jax.block_until_ready(window[-2])
      elif step == first_step + 1:
        jax.block_until_ready(metrics)
        logging.info("First step done in %.1f s (includes compilation).",
                     time.time() - window_start)
      if step % config.log_every == 0 or step == config.num_steps:
        # Fetching the metrics waits for the device: only once per log line.
        host = [jax.tree.map(lambda x: x[0], m) for m in jax.device_get(window)]
        now = time.time()
        steps_per_sec = (step - window_step) / max(now - window_start, 1e-9)
        window_start, window_step = now, step
        train_record = {
            "type": "train", "step": step, **summarise(host),
            "skipped_total": int(jax.device_get(state.num_skipped[0])),
            "skipped_files": data_lib.skipped_files(train_images),
            "steps_per_sec": steps_per_sec,
            "images_per_sec": steps_per_sec * config.batch_size,
            "eta_s": (config.num_steps - step) / steps_per_sec, "time": now}
        window = []
        log_train_record(train_record, config.num_steps)
        writer.write(train_record)
      if (eval_step is not None and config.eval_every and step % config.eval_every == 0
          and step < config.num_steps):
        eval_record = run_eval(step)
      preempted = preemption.reached(step) and step < config.num_steps
      if step % config.checkpoint_every == 0 or step == config.num_steps or preempted:
        save(step)
      if preempted:
        logging.warning("Preemption (SIGTERM): saved the checkpoint at step %d; "
                        "exiting.", step)
        break
    if not preempted:
      save(step)  # a resumed run that had nothing left to do
      if eval_step is not None:
        eval_record = run_eval(step)
      if chief:
        export_model(config, host_state_now().params, os.path.join(workdir, "model"))
    manager.wait_until_finished()
  finally:
    preemption.close()
    writer.close()
    manager.close()
  return {"state": host_state_now(), "step": step, "preempted": preempted,
          "train_metrics": train_record, "eval_metrics": eval_record}


def _initial_state(config, optimizer, manager: ocp.CheckpointManager):
  """(host state, step resumed from or None): the state of the latest checkpoint
  of ``manager`` (its data iterator position is restored by the caller), else a
  fresh state, warm-started from config.init_from when it is set."""
  host_state = create_train_state(config, optimizer)  # also the restore target
  latest = manager.latest_step()
  if latest is not None:
    restored = manager.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(host_state)))
    logging.info("Resumed from the checkpoint at step %d.", latest)
    return restored["state"], latest
  if config.init_from:
    skip = () if config.get("init_entropy_model", True) else ("entropy_model",)
    params, copied, kept = warm_start_params(host_state.params, config.init_from, skip)
    frozen.check_warm_start(config, kept)
    # Fresh optimizer moments: the source's training is a different problem.
    host_state = host_state.replace(params=params, opt_state=optimizer.init(params))
    logging.info("Warm start from %s: %d parameter arrays copied, %d kept at their "
                 "initial values%s", config.init_from, len(copied), len(kept),
                 (": " + ", ".join(kept)) if kept else ".")
  return host_state, None


def export_model(config, params, path: str) -> None:
  """Writes the trained model for the codec: ``path``/config.json + params.npz
  (``saved_model.save_params``; ``m2t compress --checkpoint path``,
  ``Codec.load(path)``)."""
  from m2t_jax.saved_model import save_params  # noqa: PLC0415

  save_params(path, config, params)
  logging.info("Exported the model to %s.", path)


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """``jax.distributed.initialize`` when launched on several hosts.

  Several hosts means: a coordinator address (argument or JAX_COORDINATOR_ADDRESS),
  or a scheduler with more than one task (SLURM_NTASKS, OMPI_COMM_WORLD_SIZE), or
  a multi-worker Cloud TPU slice (TPU_WORKER_HOSTNAMES with a comma). Must run
  before anything touches a JAX device. Returns whether it initialised.
  """
  env = os.environ
  multi = (coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
           or int(env.get("SLURM_NTASKS", "1")) > 1
           or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
           or "," in env.get("TPU_WORKER_HOSTNAMES", ""))
  if not multi:
    return False
  # Cross-process collectives on CPU hosts; GPU and TPU ignore this option.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info("jax.distributed: process %d of %d, %d local device(s).",
               jax.process_index(), jax.process_count(), jax.local_device_count())
  return True
