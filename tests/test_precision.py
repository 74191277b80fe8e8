"""Mixed precision (``nn/precision.py``): bfloat16 training computes in bfloat16,
keeps float32 parameters and learns like float32; the codec ignores it."""

import flax
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from m2t_jax import Codec, configs, train
from m2t_jax.coding.fingerprint import fingerprint
from m2t_jax.entropy import registry
from m2t_jax.nn import precision


def _config(kind, dtype):
  config = configs.get_config(kind, "tiny")
  config.compute_dtype = dtype
  config.batch_size = 2
  config.crop_size = 64
  config.warmup_steps = 0
  config.learning_rate = 1e-3
  config.lmbda_warmup_factor = 1.0
  return config


def _crops():
  """Two fixed 64x64 crops of real photos, (1 device, 2, 64, 64, 3) float32."""
  images = [skimage.data.astronaut()[200:264, 200:264], skimage.data.coffee()[100:164, 300:364]]
  return np.stack(images).astype(np.float32)[None]


def _losses(config, steps):
  state = train.create_train_state(config)
  step = jax.pmap(train.make_train_step(config), axis_name=train.AXIS, in_axes=(0, 0, None))
  replicated = flax.jax_utils.replicate(state)
  images, key, losses = _crops(), jax.random.key(0), []
  for _ in range(steps):
    replicated, metrics = step(replicated, images, key)
    losses.append(float(metrics["loss"][0]))
  return losses, jax.device_get(jax.tree.map(lambda x: x[0], replicated))


def test_cast_params_keeps_heads_and_non_floats():
  params = {"entropy_model": {"head": {"dense": {"kernel": jnp.ones((2, 3))}},
                              "transformer": {"kernel": jnp.ones((2, 2))}},
            "analysis": {"conv": {"bias": jnp.ones(3)}, "count": jnp.ones(2, jnp.int32)}}
  cast = precision.cast_params(params, "bfloat16")
  assert cast["entropy_model"]["head"]["dense"]["kernel"].dtype == jnp.float32
  assert cast["entropy_model"]["transformer"]["kernel"].dtype == jnp.bfloat16
  assert cast["analysis"]["conv"]["bias"].dtype == jnp.bfloat16
  assert cast["analysis"]["count"].dtype == jnp.int32
  assert precision.cast_params(params, "float32") is params
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    precision.cast_params(params, "float16")


@pytest.mark.parametrize("kind", registry.names())
def test_bfloat16_step_runs_its_matmuls_and_convolutions_in_bfloat16(kind):
  def dtypes(dtype):
    config = _config(kind, dtype)
    state = train.train_state_shapes(config)  # tracing needs no values
    step = train.make_train_step(config)
    jaxpr = jax.make_jaxpr(jax.vmap(step, axis_name=train.AXIS, in_axes=(None, 0, None)))(
        state, _crops(), jax.random.key(0))
    found = []

    def walk(jx):
      for eqn in jx.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
          found.append(str(eqn.invars[0].aval.dtype))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
          walk(sub)
    walk(jaxpr.jaxpr)
    return found
  f32, bf16 = dtypes("float32"), dtypes("bfloat16")
  assert set(f32) == {"float32"}
  # Most of the work in bfloat16 (the heads, the mixtures and the bits stay float32).
  assert bf16.count("bfloat16") > 0.8 * len(bf16), bf16


# The shipped default kind. Every kind computes in bfloat16 (the test above walks
# each one's train step); training another kind here cost about two minutes of
# suite time on 2 cores (docs/results/test_suite.md) and found nothing new.
@pytest.mark.parametrize("kind", ["grouped"])
def test_bfloat16_training_learns_like_float32_with_float32_parameters(kind):
  steps = 25
  f32, _ = _losses(_config(kind, "float32"), steps)
  bf16, state = _losses(_config(kind, "bfloat16"), steps)
  assert all(np.isfinite(bf16))
  print(kind, "float32", np.round(f32, 3).tolist(), "bfloat16", np.round(bf16, 3).tolist())
  # Both lose most of their initial loss over the same steps; bfloat16 ends no
  # more than 30% above float32 (medians of the last five steps: single steps
  # of a batch of two are noisy).
  end = lambda losses: float(np.median(losses[-5:]))
  assert end(bf16) < 0.5 * bf16[0] and end(f32) < 0.5 * f32[0], (f32, bf16)
  assert end(bf16) < 1.3 * end(f32), (f32[-5:], bf16[-5:])
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype("float32")}
  assert {leaf.dtype for leaf in jax.tree.leaves(state.opt_state)
          if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)} == {
              np.dtype("float32")}


def test_codec_runs_float32_whatever_the_training_dtype():
  f32 = Codec.from_config(_config("m2t", "float32"))
  bf16 = Codec(_config("m2t", "bfloat16"), f32.params)
  assert bf16.config.compute_dtype == "float32"
  assert bf16.fingerprint == f32.fingerprint == fingerprint(f32.config, f32.params)
  image = skimage.data.chelsea()[:64, :96]
  data = bf16.compress(image)
  assert data == f32.compress(image)
  assert np.array_equal(f32.decompress(data), bf16.estimate(image)["reconstruction"])
