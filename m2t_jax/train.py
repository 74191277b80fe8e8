r"""Training: pmap data parallelism, AdamW, orbax checkpoints, grain input.

  python -m m2t_jax.train --config=m2t_jax/configs/m2t.py:small \
      --workdir=/tmp/m2t_small --config.data.train_dir=/data/photos

From Python: ``train_and_evaluate(config, workdir)``.

Optimisation (SPEC §8): loss = bpp + lambda * MSE(0..255) with lambda x10 over
the first 15% of steps (``model.lmbda_at_step``). LR: linear warm-up
``lr * min(1, (step + 1) / warmup_steps)``, constant, / 10 from step
``lr_drop_fraction * num_steps`` on (VCT's ``CompressionSchedule``). Gradients
are clipped to global norm ``grad_clip_norm``, then AdamW(b1, b2, eps) with
decoupled weight decay: ``p -= lr(t) * (adam_direction + weight_decay * p)``,
i.e. the decay factor per step is ``weight_decay * lr(t)``, the weight decay
"scaled by the LR schedule" exactly as VCT passes ``weight_decay * lr_schedule``
to tfa's AdamW, and the same as ``optax.adamw(schedule, weight_decay)``. The LR is
applied in the step from the global step rather than by an optax schedule, so
that a skipped update (below) leaves optimizer state and schedule consistent.

A step whose loss or gradient norm is not finite is skipped: params and
optimizer state stay as they were, the step counter advances, and the step is
logged and counted (``num_skipped`` in the state, ``nonfinite_steps`` in the
metrics).

Data parallelism: ``jax.pmap`` over the local devices; the global batch
``batch_size`` is split into ``batch_size / jax.device_count()`` crops per
device; gradients and metrics are averaged with ``lax.pmean``. Device d draws
its noise from ``fold_in(fold_in(key, step), d)``, d the global device index,
so randomness needs no state and a resumed run draws the same numbers.

Multi-host: pass ``--coordinator_address=host:port --num_processes=N
--process_id=i`` (or set JAX_COORDINATOR_ADDRESS), or run under a scheduler that
``jax.distributed.initialize()`` detects (SLURM, Open MPI, Kubernetes, Cloud
TPU). Each host reads its own shard of the images (data.py). On CPU hosts the
collectives use gloo. Host 0 writes the logs and metrics. Tested: two
processes on one machine, one CPU device each, through --coordinator_address,
including a SIGTERM to both (tests/test_train.py).

Checkpoints (orbax, ``workdir/checkpoints``): every ``checkpoint_every`` steps,
at the end, and on SIGTERM (then the run exits cleanly; on several hosts via
JAX's preemption sync point); the last ``keep_checkpoints`` are kept. Each holds
the params, the optimizer state, the step, the skip counter and every host's
data iterator state. A run started on a workdir with checkpoints resumes from
the latest one; the result is bitwise the same as an uninterrupted run on the
same devices (tested on CPU; on GPUs add
XLA_FLAGS=--xla_gpu_deterministic_ops=true, as some reductions are not
deterministic otherwise).

Logs: absl logging every ``log_every`` steps (loss, bpp, PSNR, lambda, LR,
gradient norm, steps/s and ETA over the steps since the previous line, the
first of which include compilation) and the same as JSON lines in
``workdir/metrics.jsonl`` ({"type": "train"|"eval", "step": completed steps,
...}; train values are means over the steps since the previous line; after a
resume, steps between the checkpoint and the interruption appear twice, the
later line is the one that counts). Every ``eval_every`` steps and at the end,
estimated bpp and PSNR of center crops of the validation images
(``model(train=False)``). TensorBoard scalars in ``workdir/tensorboard`` when
tensorboardX (or TensorFlow, for flax.metrics.tensorboard) is installed.

At the end (not after a preemption) host 0 exports the parameters for the codec
to ``workdir/model`` (config.json + params.npz): ``m2t compress --checkpoint
WORKDIR/model in.png out.m2t``. ``load_checkpoint`` reads any checkpoint.

Tip: ``JAX_COMPILATION_CACHE_DIR=/some/dir`` keeps XLA's compilations between
runs, so that a resumed run starts in seconds (the tests do this).
"""

import json
import logging as py_logging
import os
import signal
import threading
import time
from typing import Any

import flax
import flax.jax_utils
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from ml_collections import config_flags

from m2t_jax import data as data_lib
from m2t_jax import model as model_lib
from m2t_jax.nn.elic import DOWNSCALE

AXIS = "batch"  # pmap axis name


# --------------------------------------------------------------------------- #
# Config checks, schedule, optimizer, state.
# --------------------------------------------------------------------------- #


def validate_training_config(config: ml_collections.ConfigDict,
                             num_devices: int | None = None,
                             num_processes: int | None = None) -> None:
  """Raises ValueError listing every impossible setting of a training config.

  Args:
    config: the full config.
    num_devices: devices taking part in training (default jax.device_count()).
    num_processes: hosts (default jax.process_count()).
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
  unit = DOWNSCALE * config.patch_size
  if config.crop_size < unit or config.crop_size % unit:
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
  if d.num_workers < 0:
    errors.append(f"data.num_workers={d.num_workers} must be >= 0.")
  if errors:
    raise ValueError("Invalid training config:\n  - " + "\n  - ".join(errors))


def learning_rate_at_step(config, step) -> jax.Array:
  """LR of update ``step`` (0-based): linear warm-up, constant, / 10 at the drop."""
  step = jnp.asarray(step, jnp.float32)
  warmup = jnp.minimum(1.0, (step + 1) / max(config.warmup_steps, 1))
  drop = jnp.where(step >= int(config.lr_drop_fraction * config.num_steps), 0.1, 1.0)
  return config.learning_rate * warmup * drop


def make_optimizer(config) -> optax.GradientTransformation:
  """Clip + Adam + decoupled weight decay; the caller scales by ``-lr(step)``.

  ``-lr * make_optimizer(config).update(...)`` is optax.adamw(lr, b1, b2, eps,
  weight_decay) after optax.clip_by_global_norm, see the module docstring.
  """
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps),
      optax.add_decayed_weights(config.weight_decay),
  )


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. Host copy: numpy; in training: one per device."""
  step: Any  # () int32: updates done (skipped ones included)
  params: Any
  opt_state: Any
  num_skipped: Any  # () int32: updates skipped for a non-finite loss/gradient


def create_train_state(config, optimizer=None) -> TrainState:
  """Freshly initialised state (numpy, on the host), params from config.seed."""
  optimizer = optimizer or make_optimizer(config)
  params = jax.jit(lambda: model_lib.init_params(config, seed=config.seed))()
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params),
                     num_skipped=jnp.zeros((), jnp.int32))
  return jax.device_get(state)


def warm_start_params(params, source: str):
  """``params`` with every leaf that ``source`` has at the same path and shape
  replaced by the source's value; returns (params, copied paths, kept paths).

  source: a saved model folder (``codec.save_params``) or a shipped model name.
  Raises ValueError when less than half of the parameters (by count) match:
  a model of another size, not a warm start.
  """
  from m2t_jax import codec, shipped  # noqa: PLC0415 - training needs no codec otherwise
  folder = source if os.path.isdir(source) else shipped.resolve(source)
  _, loaded = codec.load_params(folder)
  flat_loaded = {jax.tree_util.keystr(p): v
                 for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  copied, kept = [], []

  def pick(path, value):
    name = jax.tree_util.keystr(path)
    other = flat_loaded.get(name)
    if other is not None and other.shape == value.shape:
      copied.append(name)
      return np.asarray(other, value.dtype)
    kept.append(name)
    return value

  params = jax.tree_util.tree_map_with_path(pick, params)
  sizes = {jax.tree_util.keystr(p): int(np.prod(v.shape))
           for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  fraction = sum(sizes[k] for k in copied) / sum(sizes.values())
  if fraction < 0.5:  # a few small leaves (e.g. the RGB bias) match any model
    raise ValueError(f"init_from={source!r}: only {100 * fraction:.1f}% of this model's "
                     "parameters have a match of the same path and shape; is it a "
                     "model of another size?")
  return params, copied, kept


def make_train_step(config, model=None, optimizer=None):
  """The per-device step (state, images uint8 (B_dev, H, W, 3), key) -> (state,
  metrics), to run under ``jax.pmap(..., axis_name=AXIS)``."""
  model = model or model_lib.build_model(config)
  optimizer = optimizer or make_optimizer(config)

  def train_step(state: TrainState, images, key):
    step = state.step
    rng = jax.random.fold_in(jax.random.fold_in(key, step), jax.lax.axis_index(AXIS))
    noise_rng, dropout_rng = jax.random.split(rng)
    lmbda = model_lib.lmbda_at_step(config, step)
    x = images.astype(jnp.float32)

    def loss_fn(params):
      out = model.apply({"params": params}, x, noise_rng, train=True,
                        rngs={"dropout": dropout_rng})
      return model_lib.rd_loss(out, lmbda), out

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    loss = jax.lax.pmean(loss, AXIS)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    direction, opt_state = optimizer.update(grads, state.opt_state, state.params)
    lr = learning_rate_at_step(config, step)
    params = optax.apply_updates(state.params, jax.tree.map(lambda d: -lr * d, direction))
    # Identical on every device (loss and grads are pmean-ed), so the replicas
    # stay in sync when a step is skipped.
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(
        step=step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        num_skipped=state.num_skipped + (~finite).astype(jnp.int32))
    mean = lambda v: jax.lax.pmean(jnp.mean(v), AXIS)
    metrics = {"loss": loss, "bpp": mean(out["bpp"]), "mse": mean(out["mse"]),
               "psnr": mean(out["psnr"]), "lmbda": lmbda, "lr": lr,
               "grad_norm": grad_norm, "finite": finite}
    return new_state, metrics

  return train_step


def make_eval_step(config, model=None):
  """jit-ed (params, images uint8 (B, H, W, 3)) -> per-image bpp, mse, psnr (B,)."""
  model = model or model_lib.build_model(config)

  @jax.jit
  def eval_step(params, images):
    out = model.apply({"params": params}, images.astype(jnp.float32), train=False)
    return {k: out[k] for k in ("bpp", "mse", "psnr")}

  return eval_step


def evaluate(config, eval_step, params, images: np.ndarray) -> dict:
  """Mean estimated bpp, MSE, PSNR and loss (at config.lmbda) over ``images``."""
  b = config.eval_batch_size
  n = len(images)
  results = []
  for start in range(0, n, b):
    batch = images[start:start + b]
    if len(batch) < b:  # pad with copies so that one compilation serves all
      batch = np.concatenate([batch, np.repeat(batch[:1], b - len(batch), 0)])
    results.append(jax.device_get(eval_step(params, batch)))
  per_image = {k: np.concatenate([r[k] for r in results])[:n] for k in results[0]}
  out = {k: float(np.mean(v)) for k, v in per_image.items()}
  out["loss"] = out["bpp"] + config.lmbda * out["mse"]
  out["num_images"] = n
  return out


# --------------------------------------------------------------------------- #
# Checkpoints.
# --------------------------------------------------------------------------- #


def checkpoint_manager(workdir: str, keep: int | None = None) -> ocp.CheckpointManager:
  """Orbax manager of ``workdir/checkpoints``: items 'state' and 'data'."""
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


class _Preemption:
  """SIGTERM -> save and stop. One host: a Python signal handler; several: JAX's
  preemption sync point (all hosts stop at the same step)."""

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


# --------------------------------------------------------------------------- #
# Metrics output.
# --------------------------------------------------------------------------- #


class _MetricWriter:
  """absl log + workdir/metrics.jsonl + optional TensorBoard; host 0 only."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    self._tb = None
    self._file = None
    if not enabled:
      return
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


def _summarise(window: list[dict]) -> dict:
  """Means of the finite steps of a window of per-step metrics (host values)."""
  finite = [m for m in window if bool(m["finite"])]
  out = {}
  for k in ("loss", "bpp", "mse", "psnr", "grad_norm"):
    out[k] = float(np.mean([float(m[k]) for m in finite])) if finite else None
  out["lmbda"] = float(window[-1]["lmbda"])
  out["lr"] = float(window[-1]["lr"])
  out["nonfinite_steps"] = len(window) - len(finite)
  return out


def _format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s"


# --------------------------------------------------------------------------- #
# The loop.
# --------------------------------------------------------------------------- #


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) to config.num_steps; returns what it ended with.

  Returns:
    {'state': host TrainState (numpy), 'step': int, 'preempted': bool,
     'train_metrics': the last logged train record or None,
     'eval_metrics': the last evaluation record or None}.
  """
  validate_training_config(config)
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

  model = model_lib.build_model(config)
  optimizer = make_optimizer(config)
  train_iter = iter(data_lib.train_dataset(config))
  val_images = data_lib.eval_images(config)
  host_state = create_train_state(config, optimizer)
  manager = checkpoint_manager(workdir, config.keep_checkpoints)
  latest = manager.latest_step()
  if latest is not None:
    restored = manager.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(host_state),
        data=grain.checkpoint.CheckpointRestore(train_iter)))
    host_state = restored["state"]
    logging.info("Resumed from the checkpoint at step %d.", latest)
  elif config.init_from:
    params, copied, kept = warm_start_params(host_state.params, config.init_from)
    host_state = host_state.replace(params=params, opt_state=optimizer.init(params))
    logging.info("Warm start from %s: %d parameter arrays copied, %d kept at their "
                 "initial values%s", config.init_from, len(copied), len(kept),
                 (": " + ", ".join(kept)) if kept else ".")
  step = int(host_state.step)
  logging.info("Parameters: %d",
               sum(int(np.prod(x.shape)) for x in jax.tree.leaves(host_state.params)))

  # Replicated on a mesh axis named like the pmap axis: the pmap outputs carry
  # that sharding, and any other input sharding would compile the step twice.
  state = flax.jax_utils.replicate(host_state, axis_name=AXIS)
  p_train_step = jax.pmap(make_train_step(config, model, optimizer), axis_name=AXIS,
                          in_axes=(0, 0, None), donate_argnums=(0,))
  eval_step = make_eval_step(config, model) if val_images is not None else None
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)  # 0 is the init's
  writer = _MetricWriter(workdir, chief)
  preemption = _Preemption()

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
    logging.info("eval step %d: bpp %.4f PSNR %.2f dB loss %.4f (%d images)", at_step,
                 record["bpp"], record["psnr"], record["loss"], record["num_images"])
    writer.write(record)
    return record

  window: list = []
  train_record = eval_record = None
  preempted = False
  window_start, window_step = time.time(), step
  try:
    while step < config.num_steps:
      images = next(train_iter)
      images = images.reshape(num_local, -1, *images.shape[1:])
      state, metrics = p_train_step(state, images, key)
      step += 1
      window.append(metrics)
      if step % config.log_every == 0 or step == config.num_steps:
        host = [jax.tree.map(lambda x: x[0], m) for m in jax.device_get(window)]
        now = time.time()
        steps_per_sec = (step - window_step) / max(now - window_start, 1e-9)
        window_start, window_step = now, step
        train_record = {
            "type": "train", "step": step, **_summarise(host),
            "skipped_total": int(jax.device_get(state.num_skipped[0])),
            "steps_per_sec": steps_per_sec,
            "images_per_sec": steps_per_sec * config.batch_size,
            "eta_s": (config.num_steps - step) / steps_per_sec, "time": now}
        window = []
        r = train_record
        if r["nonfinite_steps"]:
          logging.warning("%d step(s) up to step %d had a non-finite loss or gradient: "
                          "updates skipped (%d in total).", r["nonfinite_steps"], step,
                          r["skipped_total"])
        if r["loss"] is not None:
          logging.info(
              "step %d/%d: loss %.4f bpp %.4f PSNR %.2f dB lambda %.4g lr %.3g "
              "grad_norm %.3g | %.2f steps/s, ETA %s", step, config.num_steps,
              r["loss"], r["bpp"], r["psnr"], r["lmbda"], r["lr"], r["grad_norm"],
              steps_per_sec, _format_eta(r["eta_s"]))
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


def export_model(config, params, path: str) -> None:
  """Writes the trained model for the codec: ``path``/config.json + params.npz
  (``m2t compress --checkpoint path``, ``Codec.load(path)``)."""
  from m2t_jax import codec  # noqa: PLC0415 - the codec is not needed to train
  codec.save_params(path, config, params)
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


class _QuietOrbax:
  """absl log filter: drops orbax's INFO lines (a dozen per checkpoint)."""

  def filter(self, record) -> bool:
    return record.levelno >= py_logging.WARNING or f"{os.sep}orbax{os.sep}" not in (
        record.pathname or "")


def define_flags() -> None:
  """The command line's flags. Defined only by the entry point, so that importing
  this module next to another binary with a --config flag does not clash."""
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. m2t_jax/configs/m2t.py:tiny.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Checkpoints, logs and metrics go here.")
  flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 "
                      "(default: JAX_COORDINATOR_ADDRESS or the scheduler's).")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietOrbax())
  f = flags.FLAGS
  if f.config is None or not f.workdir:
    raise app.UsageError("--config and --workdir are required.")
  maybe_initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
  result = train_and_evaluate(f.config, f.workdir)
  logging.info("Done at step %d%s.", result["step"],
               " (preempted)" if result["preempted"] else "")


if __name__ == "__main__":
  define_flags()
  app.run(main)
