"""Test-wide settings: CPU, and a persistent compilation cache.

Many tests (and the subprocesses some of them start) build codecs of the same
config and image size; the cache lets them reuse compiled executables instead of
recompiling (the suite must run in minutes on 2 CPU cores). It lives in the pytest
cache folder and is passed to subprocesses through the environment.
"""

import importlib.util
import os

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      ".pytest_cache", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
# Programs that compile in under a second are not cached: compiling them again
# costs little, and a worker of the suite segfaulted twice (2026-12-06, the
# same test both times) deserialising one of them, the coding tables
# (`get_executable_and_time`, from `tables.wide_tables`).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1.0")
# A size limit turns on JAX's file lock around every cache read and write (it
# needs the `filelock` package): without it an entry is written in place,
# where a second worker or a subprocess may read it half-written. 8 GiB is far
# above what the suite writes.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 * 2**30))

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_compilation_cache_max_size",
                  int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))


_EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "experiments")


def load_experiment(name):
  """experiments/<name>.py as a module (tests import it: ``from conftest import
  load_experiment``); the scripts are not a package, and loading them by path
  keeps experiments/ off sys.path for every other test."""
  spec = importlib.util.spec_from_file_location(
      f"experiments_{name}", os.path.join(_EXPERIMENTS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
