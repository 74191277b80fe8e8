"""What the coding path pins so that two processes compute bit-identical tables.

Range decoding works only when the decoder's coding tables equal the encoder's
bit for bit. On a CPU that holds for the same JAX version. On a GPU three things
could break it between an encoding process and a decoding one on the same kind
of GPU, and the codec pins each of them, for its own computations only:

* **Matmul precision.** XLA runs float32 matmuls and convolutions on GPUs in
  TF32 by default (about 10 mantissa bits). Results stay deterministic, but every
  table would depend on that choice; the codec traces its functions under
  ``jax.default_matmul_precision("highest")`` (true float32), so the numbers do
  not depend on a process-wide setting a user may have changed for training.
* **Autotuning.** XLA's GPU compiler times candidate kernels (GEMM and
  convolution algorithms, Triton tilings) at compile time and keeps the fastest;
  two processes may pick different ones, whose float results differ in the last
  bits. ``xla_gpu_autotune_level=0`` turns autotuning off for these executables
  (the default kernel of each op, the same in every process).
* **Non-deterministic kernels** (atomics in scatter/reductions):
  ``xla_gpu_deterministic_ops=True``.

The two XLA options are per-executable compiler options (``jax.jit(...,
compiler_options=...)``), not ``XLA_FLAGS``: importing m2t_jax changes nothing in
a user's own jitted training code. The CPU and TPU compilers ignore GPU options.
The cost is speed on a GPU (no autotuned kernels for the coding functions);
``experiments/accelerator_report.py`` measures decoding with these settings.

What is *not* promised: a stream written on one backend (or JAX/XLA version)
and read on another may still not decode; then the latent checksum turns it into
``DecodeMismatchError`` instead of a wrong image (``coding/bitstream.py``).
"""

import jax

MATMUL_PRECISION = "highest"
COMPILER_OPTIONS = {
    "xla_gpu_deterministic_ops": True,
    "xla_gpu_autotune_level": 0,
}


class PinnedJit:
  """``jax.jit(fn, **kwargs)`` with the coding path's compiler options, called
  under ``jax.default_matmul_precision(MATMUL_PRECISION)``. Other attributes
  (``lower``, ``_cache_size``, ...) are the jitted function's."""

  def __init__(self, fn, **kwargs):
    self._jitted = jax.jit(fn, compiler_options=COMPILER_OPTIONS, **kwargs)

  def __call__(self, *args, **kwargs):
    with jax.default_matmul_precision(MATMUL_PRECISION):
      return self._jitted(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._jitted, name)


def jit(fn=None, **kwargs):
  """Decorator or function: ``determinism.jit(f, static_argnums=...)``."""
  if fn is None:
    return lambda f: PinnedJit(f, **kwargs)
  return PinnedJit(fn, **kwargs)
