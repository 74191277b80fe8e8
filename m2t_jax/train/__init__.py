r"""Training: pmap data parallelism, AdamW, orbax checkpoints, grain input.

  python -m m2t_jax.train --config=m2t_jax/configs/m2t.py:small \
      --workdir=/tmp/m2t_small --config.data.train_dir=/data/photos

From Python: ``train_and_evaluate(config, workdir)``.

The package, one concern a module:

* ``config_check``: ``validate_training_config``, every impossible setting at once.
* ``optim``: ``learning_rate_at_step``, ``make_optimizer``.
* ``state``: ``TrainState``, ``create_train_state``, ``train_state_shapes``,
  ``warm_start_params``.
* ``step``: ``make_train_step`` (pmap, axis ``AXIS``), ``make_eval_step``, ``evaluate``.
* ``checkpoints``: ``checkpoint_manager``, ``load_checkpoint``, ``latest_step``,
  ``checkpoint_model`` (a checkpoint for the codec), SIGTERM handling.
* ``metrics_writer``: log lines, ``metrics.jsonl``, TensorBoard.
* ``data``: the grain input pipelines (image folders, TFDS, crops, sharding).
* ``folder_source``: a folder's images, unreadable files skipped and counted.
* ``loop``: ``train_and_evaluate``, ``export_model``, ``maybe_initialize_distributed``.
* ``__main__``: the absl command line above.

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
so randomness needs no state and a resumed run draws the same numbers (``key``
is a new-style typed key, ``jax.random.key(seed)``, passed to every device by
``in_axes=None``).

Multi-host: pass ``--coordinator_address=host:port --num_processes=N
--process_id=i`` (or set JAX_COORDINATOR_ADDRESS), or run under a scheduler that
``jax.distributed.initialize()`` detects (SLURM, Open MPI, Kubernetes, Cloud
TPU). Each host reads its own shard of the images (``train.data``). On CPU hosts the
collectives use gloo. Host 0 writes the logs and metrics. Tested: two
processes on one machine, one CPU device each, through --coordinator_address,
including a SIGTERM to both (tests/test_train.py).

Checkpoints (orbax, ``workdir/checkpoints``): every ``checkpoint_every`` steps,
at the end, and on SIGTERM (then the run exits cleanly, within about two steps:
the loop keeps one step in flight, not JAX's whole dispatch queue; on several
hosts via JAX's preemption sync point); the last ``keep_checkpoints`` are kept. Each holds
the params, the optimizer state, the step, the skip counter and every host's
data iterator state. A run started on a workdir with checkpoints resumes from
the latest one; the result is bitwise the same as an uninterrupted run on the
same devices (tested on CPU; on GPUs add
XLA_FLAGS=--xla_gpu_deterministic_ops=true, as some reductions are not
deterministic otherwise).

Training images: ``data.train_dir`` (or a TFDS dataset), optionally only its
``data.split`` ('train', 'val', 'test': ``evaluation.splits``); an unreadable
file is skipped with one warning naming it and counted (``skipped_files`` in
the train records); none readable, or more than ``data.max_unreadable_fraction``
(default 0.5) of the files unreadable, ends the run with a one-line
``TrainingDataError`` (``train.folder_source``).

Logs: absl logging every ``log_every`` steps (loss, bpp, PSNR, lambda, LR,
gradient norm, steps/s and ETA over the steps since the previous line, the
first of which include compilation) and the same as JSON lines in
``workdir/metrics.jsonl`` ({"type": "train"|"eval", "step": completed steps,
...}; train values are means over the steps since the previous line; after a
resume, steps between the checkpoint and the interruption appear twice, the
later line is the one that counts). Every ``eval_every`` steps and at the end,
estimated bpp and PSNR of center crops of the validation images
(``model(train=False)``). The eval bpp is the rate of the model's coding
schedule, what ``Codec.estimate`` gives, for every kind: the one-pass rate of a
kind whose ``one_pass_rate`` is True (M2T), else the decode loop's S steps (MT),
so that the curves of all kinds compare; the latter also log ``bpp_one_pass``
(MT: every token masked, S = 1). TensorBoard scalars in ``workdir/tensorboard`` when
tensorboardX (or TensorFlow, for flax.metrics.tensorboard) is installed.

At the end (not after a preemption) host 0 exports the parameters for the codec
to ``workdir/model`` (config.json + params.npz, ``saved_model.save_params``):
``m2t compress --checkpoint WORKDIR/model in.png out.m2t``. ``config.init_from``
(a saved model folder or a shipped model's name) warm-starts a fresh run from
the parameters of the same path and shape (``warm_start_params``).
``load_checkpoint`` reads any checkpoint; ``checkpoint_model(workdir, step)``
gives (config, params) for ``Codec``. ``m2t eval --checkpoint WORKDIR`` takes a
workdir: its exported model, else its latest checkpoint.

Tip: ``JAX_COMPILATION_CACHE_DIR=/some/dir`` keeps XLA's compilations between
runs, so that a resumed run starts in seconds (the tests do this).
"""

# The command line (absl flags) lives in __main__.py and is not imported here:
# ``python -m m2t_jax.train`` imports this package first, then runs __main__.
from m2t_jax.train.checkpoints import (checkpoint_manager, checkpoint_model, latest_step,
                                       load_checkpoint)
from m2t_jax.train.config_check import validate_training_config
from m2t_jax.train.loop import export_model, maybe_initialize_distributed, train_and_evaluate
from m2t_jax.train.optim import learning_rate_at_step, make_optimizer
from m2t_jax.train.state import (TrainState, create_train_state, train_state_shapes,
                                  warm_start_params)
from m2t_jax.train.step import AXIS, evaluate, make_eval_step, make_train_step

__all__ = [
    "AXIS",
    "TrainState",
    "checkpoint_manager",
    "checkpoint_model",
    "create_train_state",
    "train_state_shapes",
    "evaluate",
    "export_model",
    "latest_step",
    "learning_rate_at_step",
    "load_checkpoint",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "maybe_initialize_distributed",
    "train_and_evaluate",
    "validate_training_config",
    "warm_start_params",
]
