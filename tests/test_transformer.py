"""Transformer: mask semantics and the static, group-writable k/v cache."""

import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax.entropy import schedules
from m2t_jax.nn import transformer as tfm

D, HEADS, LAYERS = 16, 2, 2


def _model_and_params(length):
  model = tfm.Transformer(num_layers=LAYERS, num_heads=HEADS, mlp_dim=32)
  x = jax.random.normal(jax.random.key(0), (2, length, D))
  return model, model.init(jax.random.key(1), x), x


def test_cached_groups_match_block_masked_pass():
  sizes = np.array([3, 1, 4, 2])  # any sizes, not only non-decreasing ones
  length = int(sizes.sum())
  model, params, x = _model_and_params(length)
  full, _ = model.apply(params, x, mask=jnp.asarray(schedules.block_triangular_mask(sizes)))
  cache = tfm.init_cache(2, length, LAYERS, HEADS, D // HEADS)
  outs = []
  for o, g in zip(schedules.group_offsets(sizes), sizes, strict=True):
    out, cache = model.apply(params, x[:, o:o + g], cache=cache, offset=int(o))
    outs.append(out)
  np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full),
                             atol=1e-5)


def test_cache_is_written_only_at_the_group_slots():
  model, params, x = _model_and_params(8)
  cache = tfm.init_cache(2, 8, LAYERS, HEADS, D // HEADS)
  _, cache = model.apply(params, x[:, :3], cache=cache, offset=2)
  for layer in cache:
    for buf in (layer["k"], layer["v"]):
      assert float(jnp.abs(buf[:, 2:5]).min()) > 0  # written
      assert float(jnp.abs(buf[:, :2]).max()) == 0 and float(jnp.abs(buf[:, 5:]).max()) == 0


def test_all_true_mask_equals_no_mask_and_mask_matters():
  model, params, x = _model_and_params(6)
  a, _ = model.apply(params, x)
  b, _ = model.apply(params, x, mask=jnp.ones((6, 6), bool))
  c, _ = model.apply(params, x, mask=jnp.tril(jnp.ones((6, 6), bool)))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  assert not np.allclose(np.asarray(a[:, 0]), np.asarray(c[:, 0]), atol=1e-4)
  # Under a causal mask, the last input cannot reach the first output.
  d, _ = model.apply(params, x.at[:, -1].add(3.0), mask=jnp.tril(jnp.ones((6, 6), bool)))
  np.testing.assert_allclose(np.asarray(d[:, 0]), np.asarray(c[:, 0]), atol=1e-6)
