"""ELIC transforms: shapes, size rules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from m2t_jax.model import pad_to_multiple
from m2t_jax.nn.elic import Conv1x1, ElicAnalysis, ElicSynthesis, UpConv5x5


@pytest.mark.parametrize("h,w", [(16, 16), (48, 80), (16, 112)])
def test_shapes(h, w):
  x = jax.random.uniform(jax.random.key(0), (2, h, w, 3))
  enc = ElicAnalysis(num_filters=8, latent_channels=6)
  params = enc.init(jax.random.key(1), x)
  y = enc.apply(params, x)
  assert y.shape == (2, h // 16, w // 16, 6)
  dec = ElicSynthesis(num_filters=8)
  x_hat = dec.apply(dec.init(jax.random.key(2), y), y)
  assert x_hat.shape == (2, h, w, 3)
  assert bool(jnp.all(jnp.isfinite(x_hat)))


@pytest.mark.parametrize("h,w,cin,cout", [(1, 1, 3, 2), (7, 9, 5, 6), (4, 4, 8, 3)])
def test_upconv_equals_flax_conv_transpose(h, w, cin, cout):
  # The sub-pixel form must be the same function, with the same parameter
  # layout and initial values, as the flax layer it replaces (shipped weights
  # were trained with flax's). Random (non-initial) weights and bias exercise
  # every tap of every output phase, edges included.
  x = jax.random.normal(jax.random.key(1), (2, h, w, cin))
  ref = nn.ConvTranspose(cout, (5, 5), strides=(2, 2), padding="SAME")
  ours = UpConv5x5(cout)
  p_ref = ref.init(jax.random.key(0), x)
  p_ours = ours.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, p_ref) == jax.tree.map(jnp.shape, p_ours)
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, p_ref, p_ours)))
  leaves, tree = jax.tree.flatten(p_ref)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  p = jax.tree.unflatten(
      tree, [jax.random.normal(k, v.shape) for k, v in zip(keys, leaves, strict=True)])
  expected = ref.apply(p, x)
  got = ours.apply(p, x)
  assert got.shape == (2, 2 * h, 2 * w, cout)
  assert jnp.allclose(got, expected, atol=1e-4 * float(jnp.abs(expected).max()))


@pytest.mark.parametrize("shape,cout", [((2, 5, 7, 6), 3), ((1, 1, 1, 4), 8)])
def test_conv1x1_equals_flax_conv(shape, cout):
  # Same parameters, initial values and function (values and gradients) as the
  # flax layer it replaces: shipped weights were trained with flax's.
  x = jax.random.normal(jax.random.key(1), shape)
  ref, ours = nn.Conv(cout, (1, 1)), Conv1x1(cout)
  p_ref, p_ours = ref.init(jax.random.key(0), x), ours.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, p_ref) == jax.tree.map(jnp.shape, p_ours)
  assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, p_ref, p_ours)))
  p = jax.tree.map(lambda v: v + 0.5, p_ref)  # a nonzero bias too
  assert jnp.allclose(ours.apply(p, x), ref.apply(p, x), rtol=1e-6, atol=1e-6)
  loss = lambda m: jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), argnums=(0, 1))
  for a, b in zip(jax.tree.leaves(loss(ours)(p, x)), jax.tree.leaves(loss(ref)(p, x)),
                  strict=True):
    assert jnp.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_elic_keeps_flax_parameter_names():
  # Shipped params.npz files name the 1x1 layers as flax's auto-named Conv_i.
  x = jnp.zeros((1, 16, 16, 3))
  params = ElicAnalysis(num_filters=8, latent_channels=4, num_res_blocks=1).init(
      jax.random.key(0), x)["params"]
  block = params["ResidualBottleneck_0"]
  assert sorted(block) == ["Conv_0", "Conv_1", "Conv_2"]
  assert block["Conv_0"]["kernel"].shape == (1, 1, 8, 4)
  assert block["Conv_1"]["kernel"].shape == (3, 3, 4, 4)
  assert params["SimplifiedAttention_0"]["Conv_0"]["kernel"].shape == (1, 1, 8, 8)


def test_synthesis_keeps_flax_parameter_names():
  # Shipped params.npz files name the upsampling layers ConvTranspose_0..3.
  y = jnp.zeros((1, 1, 1, 4))
  params = ElicSynthesis(num_filters=8).init(jax.random.key(0), y)["params"]
  assert {f"ConvTranspose_{i}" for i in range(4)} <= set(params)
  assert params["ConvTranspose_3"]["kernel"].shape == (5, 5, 8, 3)


def test_each_image_is_transformed_independently():
  # Batch elements must not mix (a reshape/transposition bug would mix them).
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  enc = ElicAnalysis(num_filters=8, latent_channels=4)
  params = enc.init(jax.random.key(1), x)
  y = enc.apply(params, x)
  y0 = enc.apply(params, x[:1])
  assert jnp.allclose(y[:1], y0, atol=1e-5)
  assert not jnp.allclose(y[0], y[1], atol=1e-3)


@pytest.mark.parametrize("h,w", [(17, 16), (16, 15), (40, 48)])
def test_rejects_sizes_not_multiple_of_16(h, w):
  enc = ElicAnalysis(num_filters=8, latent_channels=4)
  with pytest.raises(ValueError, match="multiples of 16"):
    enc.init(jax.random.key(0), jnp.zeros((1, h, w, 3)))


@pytest.mark.parametrize("h,w", [(1, 1), (15, 17), (33, 16)])
def test_pad_to_multiple_keeps_image_and_replicates_edges(h, w):
  x = jax.random.uniform(jax.random.key(0), (1, h, w, 3))
  p = pad_to_multiple(x)
  assert p.shape[1] % 16 == 0 and p.shape[2] % 16 == 0
  assert p.shape[1] - h < 16 and p.shape[2] - w < 16
  assert jnp.array_equal(p[:, :h, :w], x)
  assert jnp.array_equal(p[:, h:, :w], jnp.broadcast_to(x[:, -1:], p[:, h:, :w].shape))
