"""Test-wide settings: CPU, and a persistent compilation cache.

Many tests build codecs of the same config and image size; the cache lets later
tests reuse compiled steps instead of recompiling them (the suite must run in
minutes on 2 CPU cores). It lives in the pytest cache folder.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

_CACHE = os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
