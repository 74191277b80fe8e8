"""The coding path's pinned settings (``coding/determinism.py``): accepted by XLA,
applied to the codec's functions, and not leaked into the user's process."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from m2t_jax import Codec, get_config
from m2t_jax.coding import determinism, steps, tables


def test_compiler_options_are_real_xla_options():
  f = lambda x: x @ x
  x = jnp.ones((4, 4))
  # XLA validates option names: ours compile, a misspelt one is refused.
  jax.jit(f, compiler_options=determinism.COMPILER_OPTIONS).lower(x).compile()
  with pytest.raises(Exception, match="xla_gpu_deterministic_opz"):
    jax.jit(f, compiler_options={"xla_gpu_deterministic_opz": True}).lower(x).compile()


def test_codec_functions_are_pinned_and_nothing_leaks():
  config = get_config("m2t", "tiny")
  codec = Codec.from_config(config)
  image = skimage.data.coffee()[:40, :56]
  before = jax.config.jax_default_matmul_precision
  data = codec.compress(image)
  assert np.array_equal(codec.decompress(data), codec.estimate(image)["reconstruction"])
  # Every jitted function on the coding path is a PinnedJit ...
  frozen = codec.config  # the codec's own (hashable, frozen) config
  for fn in (codec._analysis, codec._synthesize, steps.step_fn(codec.entropy_model, frozen),
             tables.wide_fn(frozen), steps.element_bits):
    assert isinstance(fn, determinism.PinnedJit)
    assert fn._cache_size() >= 0  # the jitted function's attributes pass through
  # ... while the process-wide setting is what it was, inside and after.
  assert jax.config.jax_default_matmul_precision == before

  seen = []

  @jax.jit
  def user_fn(x):
    seen.append(jax.config.jax_default_matmul_precision)
    return x * 2

  user_fn(jnp.ones(3))
  assert seen == [before]


def test_pinned_call_traces_under_highest_precision():
  seen = []

  def f(x):
    seen.append(jax.config.jax_default_matmul_precision)
    return x + 1

  determinism.jit(f)(jnp.ones(2))
  assert seen == [determinism.MATMUL_PRECISION]
