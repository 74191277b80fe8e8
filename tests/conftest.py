"""Test-wide settings: CPU, and a persistent compilation cache.

Several tests start fresh Python processes of the same configs (decoding in a
new process, two-process training, the accelerator report's children); the cache
lets them reuse compiled executables instead of recompiling (the suite must run
in minutes on 2 CPU cores). It lives in the pytest cache folder and is passed to
them through the environment; the pytest workers share it too (below).
"""

import gc
import importlib
import os
import sys

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      ".pytest_cache", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
# Programs that compile in under a second are not cached: compiling them again
# costs little.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1.0")
# A size limit turns on JAX's file lock around every cache read and write (it
# needs the `filelock` package): without it an entry is written in place,
# where another subprocess may read it half-written. 8 GiB is far above what
# the suite writes.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 * 2**30))

import jax  # noqa: E402

# The pytest workers use the persistent cache too: a program a test compiles is
# reloaded (seconds) rather than recompiled (tens of seconds) by the other
# worker, by the fresh subprocesses and after the clearing below. Workers on the
# cache had segfaulted inside `get_executable_and_time` after a dozen test
# files, before the clearing existed; that fits the mapping cap described below
# (a deserialised executable maps its sections like a compiled one), and a
# clean-clone run with both in place lost no worker (docs/results/test_suite.md).


# The experiment scripts are the package ``experiments`` at the repository root
# (``python -m experiments.NAME``); tests import them as ``from experiments
# import NAME``, also when pytest is started from elsewhere than the root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)


def load_experiment(name):
  """The module ``experiments.<name>`` (``from experiments import <name>``)."""
  return importlib.import_module(f"experiments.{name}")


# Every compiled XLA:CPU executable keeps about five memory mappings of its own
# (code and data sections) while it is alive, and Linux caps a process at
# vm.max_map_count mappings (65530 by default). A pytest worker runs dozens of
# test files and keeps every program it compiled in JAX's caches; on a clean
# clone its mappings grew by about 100 per second (15,000-18,000 after four
# minutes) until an allocation inside XLA's compiler failed and the worker died
# of a segmentation fault in `backend_compile_and_load`. Dropping the compiled
# programs when a worker nears the cap keeps it below (55,000 leaves room for
# about 2,000 more programs within one test); the next test recompiles what it
# needs. A lower threshold clears, and recompiles, more often.
_MAPS = "/proc/self/maps"
_MAX_MAPS = 55000


def _mapping_count():
  with open(_MAPS, "rb") as f:
    return sum(1 for _ in f)


def pytest_runtest_teardown(item, nextitem):
  del item, nextitem
  if os.path.exists(_MAPS) and _mapping_count() > _MAX_MAPS:
    jax.clear_caches()
    gc.collect()
