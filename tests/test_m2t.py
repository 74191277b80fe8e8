"""M2T: cached decoding equals teacher forcing; causality; special schedules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2t_jax.entropy import gmm, schedules
from m2t_jax.entropy.m2t import M2T

C = 6


def _m2t(patch_size, num_steps, alpha=2.2, order="qlds", d_model=32, layers=2):
  return M2T(latent_channels=C, patch_size=patch_size, d_model=d_model,
             num_layers=layers, num_heads=2, mlp_dim=64, num_steps=num_steps,
             alpha=alpha, order=order)


def _tokens(model, batch=3, seed=0):
  x = jax.random.normal(jax.random.key(seed), (batch, model.num_tokens, C)) * 4
  return jnp.round(x)


def _cached_bits(model, params, tokens, widths="shared"):
  """Per-element bits (B, L, C) in location order from S cached, jitted steps,
  as the codec runs them: with ``widths='shared'`` a traced step index, padded to
  ``step_width`` (two compilations), junk rows dropped, junk slots left in the
  cache; with 'exact' a static step index at its group's size (S compilations)."""
  model = model.with_step_widths(widths)
  sched = model.schedule
  exact = widths == "exact"
  step = jax.jit(functools.partial(model.apply, method=M2T.step),
                 static_argnums=(3, 4) if exact else 4)
  cache = model.init_cache(tokens.shape[0])
  out = np.zeros(tokens.shape, np.float32)
  width = int(sched.sizes.max())
  prev = np.zeros((tokens.shape[0], width, C), np.float32)
  for i in range(sched.num_steps):
    cells, g = sched.group(i), int(sched.sizes[i])
    assert model.step_width(i) == g if exact else model.step_width(i) >= g
    mixture, cache = step(params, prev, cache, i if exact else np.int32(i),
                          model.step_width(i))
    assert mixture.means.shape[1] == model.step_width(i)
    mixture = jax.tree.map(lambda t, g=g: t[:, :g], mixture)
    out[:, cells] = np.asarray(gmm.bits(mixture, tokens[:, cells], 1e-9))
    prev = np.zeros_like(prev)
    prev[:, :g] = tokens[:, cells]
  compiled = sched.num_steps if exact else len({model.step_width(i)
                                                for i in range(sched.num_steps)})
  assert step._cache_size() == compiled
  return out


# (12, 8): many uneven groups (144 cells), at a third of the paper-size (24, 12)
# case's test time on 2 cores; the property does not depend on the size.
@pytest.mark.parametrize("widths", ["shared", "exact"])
@pytest.mark.parametrize("patch_size,num_steps", [(4, 4), (12, 8)])
def test_cached_decode_matches_teacher_forcing(patch_size, num_steps, widths):
  model = _m2t(patch_size, num_steps)
  tokens = _tokens(model)
  params = model.init(jax.random.key(1), tokens)
  teacher = np.asarray(gmm.bits(model.apply(params, tokens), tokens, 1e-9))
  cached = _cached_bits(model, params, tokens, widths)
  diff = np.abs(cached - teacher).max()
  print(f"w_T={patch_size} S={num_steps}: max |cached - teacher-forced| = {diff:.3g} bits")
  assert diff <= 1e-4
  assert teacher.mean() > 0.1  # not a degenerate model that predicts nothing


def _group_predictions(model, params, tokens, i):
  mix = model.apply(params, tokens)
  cells = model.schedule.group(i)
  return np.asarray(jnp.stack([t[:, cells] for t in mix]))


def test_no_future_leak():
  model = _m2t(4, 4)
  tokens = _tokens(model)
  params = model.init(jax.random.key(1), tokens)
  sched = model.schedule
  rng = np.random.default_rng(0)
  for i in range(sched.num_steps):
    base = _group_predictions(model, params, tokens, i)
    future = sched.order[sched.offsets[i]:]  # groups >= i
    changed = np.array(tokens)
    changed[:, future] += rng.integers(1, 20, size=changed[:, future].shape)
    np.testing.assert_allclose(
        _group_predictions(model, params, jnp.asarray(changed), i), base, atol=1e-6)
    if i:  # ... while the previous group does matter (the test is not vacuous).
      past = np.array(tokens)
      past[:, sched.group(i - 1)] += 7
      assert not np.allclose(_group_predictions(model, params, jnp.asarray(past), i),
                             base, atol=1e-4)


def test_group_size_one_is_autoregressive():
  model = _m2t(3, 9, alpha=1.0, order="raster")  # 9 groups of one token
  sched = model.schedule
  np.testing.assert_array_equal(sched.sizes, np.ones(9))
  mask = schedules.block_triangular_mask(sched.sizes)
  np.testing.assert_array_equal(mask, np.tril(np.ones((9, 9), bool)))
  maps = schedules.m2t_index_maps(sched.order, sched.sizes)
  np.testing.assert_array_equal(maps.input_index, np.r_[-1, sched.order[:-1]])
  tokens = _tokens(model)
  params = model.init(jax.random.key(1), tokens)
  base = model.apply(params, tokens)
  for s in range(9):  # changing the token of slot s changes nothing at slots <= s
    changed = tokens.at[:, sched.order[s]].add(5.0)
    out = model.apply(params, changed)
    before = sched.order[:s + 1]
    np.testing.assert_allclose(np.asarray(out.means[:, before]),
                               np.asarray(base.means[:, before]), atol=1e-6)
    if s + 1 < 9:
      after = sched.order[s + 1]
      assert not np.allclose(np.asarray(out.means[:, after]),
                             np.asarray(base.means[:, after]), atol=1e-4)
  cached = _cached_bits(model, params, tokens)
  teacher = np.asarray(gmm.bits(base, tokens, 1e-9))
  assert np.abs(cached - teacher).max() <= 1e-4


def test_single_step_is_factorized():
  model = _m2t(4, 1)
  tokens = _tokens(model)
  params = model.init(jax.random.key(1), tokens)
  a = model.apply(params, tokens)
  b = model.apply(params, tokens * 3 + 1)
  np.testing.assert_allclose(np.asarray(a.means), np.asarray(b.means), atol=1e-6)


def test_one_model_serves_any_schedule():
  # The same parameters decode exactly under other orders and step counts.
  base = _m2t(4, 4)
  tokens = _tokens(base)
  params = base.init(jax.random.key(1), tokens)
  for other in (_m2t(4, 4, order="raster"), _m2t(4, 8, order="random"), _m2t(4, 2)):
    teacher = np.asarray(gmm.bits(other.apply(params, tokens), tokens, 1e-9))
    for widths in ("shared", "exact"):
      assert np.abs(_cached_bits(other, params, tokens, widths) - teacher).max() <= 1e-4


def test_step_checks_its_input_size_and_order():
  model = _m2t(4, 4)
  tokens = _tokens(model)
  params = model.init(jax.random.key(1), tokens)
  with pytest.raises(ValueError, match="must cover the width"):
    model.apply(params, tokens[:, :3], model.init_cache(3), 1, 4, method=M2T.step)
  with pytest.raises(ValueError, match="width 1 is too small"):
    model.apply(params, tokens, model.init_cache(3), 3, 1, method=M2T.step)
  with pytest.raises(ValueError, match="step_widths must be one of"):
    model.with_step_widths("padded")
  with pytest.raises(ValueError, match="step_widths must be one of"):
    model.clone(step_widths="padded").step_width(0)
  with pytest.raises(ValueError, match="only for MT"):
    _m2t(4, 4, order="entropy").init(jax.random.key(1), tokens)


def test_the_stream_records_step_widths_and_the_decoder_follows():
  """A stream says how its encoder ran the steps; a decoder set up either way
  decodes both kinds exactly (here both on CPU, where 'auto' means exact)."""
  from m2t_jax import EntropyCoder, get_config  # noqa: PLC0415
  from m2t_jax.coding import bitstream  # noqa: PLC0415
  config = get_config("m2t", "tiny")
  y = np.random.default_rng(3).integers(-5, 6, (6, 9, config.latent_channels))
  exact = EntropyCoder.from_config(config, seed=7)
  shared = EntropyCoder.from_config(config, seed=7)
  shared.model = shared.model.with_step_widths("shared")
  streams = {name: coder.compress(y) for name, coder in (("exact", exact),
                                                         ("shared", shared))}
  for name, data in streams.items():
    assert bitstream.unpack(data)[0].step_widths == name
    for coder in (exact, shared):
      np.testing.assert_array_equal(coder.decompress(data), y)
