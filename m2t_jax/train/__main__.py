r"""Command line: ``python -m m2t_jax.train --config=FILE:SIZE --workdir=DIR``.

  python -m m2t_jax.train --config=m2t_jax/configs/m2t.py:small \
      --workdir=/tmp/m2t_small --config.data.train_dir=/data/photos

Any config field can be overridden (``--config.num_steps=1000``); multi-host
runs add --coordinator_address, --num_processes and --process_id (see
``m2t_jax.train``). Training images that cannot make a run (none readable, or
more than data.max_unreadable_fraction of them unreadable) end it with one line
on stderr and exit status 1.
"""

import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from m2t_jax.train.folder_source import TrainingDataError
from m2t_jax.train.loop import maybe_initialize_distributed, train_and_evaluate


class _QuietOrbax:
  """absl log filter: drops orbax's INFO lines (a dozen per checkpoint)."""

  def filter(self, record) -> bool:
    return record.levelno >= py_logging.WARNING or f"{os.sep}orbax{os.sep}" not in (
        record.pathname or "")


def define_flags() -> None:
  """The command line's flags. Defined only when this file runs as the program,
  not when the package is imported: importing m2t_jax.train next to another
  binary with a --config flag must not clash."""
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
  try:
    result = train_and_evaluate(f.config, f.workdir)
  except TrainingDataError as e:  # the user's data, not a bug: no traceback
    sys.exit(f"m2t_jax.train: error: {e}")
  logging.info("Done at step %d%s.", result["step"],
               " (preempted)" if result["preempted"] else "")


if __name__ == "__main__":
  define_flags()
  app.run(main)
