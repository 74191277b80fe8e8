"""MT: decode steps agree with the training forward; masked values never leak."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from m2t_jax import model as model_lib
from m2t_jax.coding import steps, tables
from m2t_jax.configs import get_config
from m2t_jax.entropy import gmm, mt, registry

C = 6


def _mt(order="qlds", num_steps=4):
  return mt.MT(latent_channels=C, patch_size=4, d_model=32, num_layers=2, num_heads=2,
               mlp_dim=64, num_steps=num_steps, order=order)


def _setup():
  model = _mt()
  tokens = jnp.round(jax.random.normal(jax.random.key(0), (3, 16, C)) * 4)
  params = model.init(jax.random.key(1), tokens, jnp.zeros((3, 16), bool))
  return model, params, tokens


@pytest.mark.parametrize("order", ["qlds", "entropy"])
def test_coding_loop_matches_training_rate(order):
  # Two different paths must give the same distributions: the coding loop (jitted
  # decode_step / decode_update, which sees only the values fed so far, zeros
  # elsewhere) and the training pass (rate(), which sees every true value and
  # hides the masked ones behind the mask vector). rate draws its mask from
  # mt.random_mask; substituting the decode state's mask (unknown = masked) runs
  # rate's own code, its bits formula and prob_floor included (rate has no
  # explicit-mask argument).
  config = get_config("mt", "tiny")
  config.schedule.order = order
  config = ml_collections.FrozenConfigDict(config)  # hashable: the loop caches its step
  model = registry.build(config)
  n, length, c = 3, model.num_tokens, config.latent_channels
  valid = np.ones((n, length), bool)
  valid[2, 3::4] = False  # the right column of the last patch is padding
  tokens = np.round(np.asarray(jax.random.normal(jax.random.key(0), (n, length, c))) * 3)
  tokens = np.where(valid[..., None], tokens, 0.0).astype(np.float32)  # padding = 0
  params = model.init(jax.random.key(1), jnp.asarray(tokens), jnp.asarray(~valid))["params"]

  @jax.jit  # one compilation for every step (eager, each op compiles on its own)
  def training_pass(tokens, masked):
    # Traced once with ``masked`` as an argument, so the substitute is right for
    # every step.
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(mt, "random_mask", lambda *_: masked)
      rate = model.apply({"params": params}, tokens, tokens, jax.random.key(2),
                         method="rate")
    mixture = model.apply({"params": params}, tokens, ~masked)
    # The coding tables of the training mixtures, with the config's own table
    # parameters: what the range coder must get from the loop.
    centers, pmf = gmm.coding_tables(mixture, tables.narrow_radius(config),
                                     config.gmm.prob_floor)
    return rate, mixture, centers, pmf

  rows = np.arange(n)[:, None]
  known = ~valid  # padding is known from the start (SPEC: never coded)
  num_steps = 0
  for step in steps.CodingLoop(model, params, config, valid):
    rate, full, centers, pmf = training_pass(jnp.asarray(tokens), jnp.asarray(~known))
    np.testing.assert_array_equal(np.asarray(rate.paid), ~known)
    # The loop codes exactly the step's cells that are neither padding nor coded.
    np.testing.assert_array_equal(step.todo, np.broadcast_to(
        ~known[rows, step.cells][..., None], step.todo.shape))
    train_mix = gmm.Mixture(*[np.asarray(t)[rows, step.cells] for t in full])
    for name, got, want in zip(gmm.Mixture._fields, step.mixture, train_mix, strict=True):
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5, err_msg=name)
    loop_bits = steps.element_bits(step.mixture, step.take(tokens), config.gmm.prob_floor)
    np.testing.assert_allclose(np.asarray(loop_bits),
                               np.asarray(rate.bits)[rows, step.cells], atol=1e-4)
    np.testing.assert_array_equal(step.centers, np.asarray(centers)[rows, step.cells])
    np.testing.assert_allclose(step.pmf, np.asarray(pmf)[rows, step.cells], atol=1e-6)
    step.feed(step.take(tokens))
    known[rows, step.cells] = True
    num_steps += 1
  assert num_steps == config.schedule.num_steps
  assert known.all()  # every valid cell was coded


def test_training_model_path_uses_the_mask():
  # CompressionModel's MT rate counts masked tokens only, scaled to all tokens.
  config = get_config("mt", "tiny")
  m = model_lib.build_model(config)
  params = model_lib.init_params(config)
  x = jax.random.uniform(jax.random.key(0), (1, 64, 64, 3)) * 255
  y_hat = jnp.round(m.apply({"params": params}, x, method=model_lib.CompressionModel.encode))
  from m2t_jax.entropy import patches
  tokens, _ = patches.to_patches(y_hat, config.patch_size)
  rng = jax.random.key(3)
  rate = m.apply({"params": params}, tokens, tokens, rng,
                 method=lambda mod, t, y, r: mod.entropy_model.rate(t, y, rng=r))
  masked = rate.paid
  direct = m.apply({"params": params}, tokens, ~masked,
                   method=lambda mod, t, k: mod.entropy_model(t, k))
  expected = gmm.bits(direct, tokens, config.gmm.prob_floor)
  np.testing.assert_allclose(np.asarray(rate.bits), np.asarray(expected), atol=1e-4)
  frac = float(masked.mean())
  assert 0.0 < frac < 1.0


def test_masked_values_do_not_influence_predictions():
  model, params, tokens = _setup()
  known = jnp.arange(16)[None].repeat(3, 0) % 3 == 0
  a = model.apply(params, tokens, known)
  b = model.apply(params, jnp.where(known[..., None], tokens, 99.0), known)
  np.testing.assert_allclose(np.asarray(a.means), np.asarray(b.means), atol=1e-6)
  c = model.apply(params, jnp.where(known[..., None], tokens + 3, tokens), known)
  assert not np.allclose(np.asarray(a.means), np.asarray(c.means), atol=1e-4)


def test_random_mask_ratios():
  masks = mt.random_mask(jax.random.key(0), 2000, 100, 0.05, 0.99)
  counts = np.asarray(masks.sum(-1))
  assert counts.min() >= 5 and counts.max() <= 99
  assert 0.45 < counts.mean() / 100 < 0.58  # E[ceil(100 r)] / 100 ~ 0.52
  assert len(np.unique(counts)) > 50
  # Different examples get different positions.
  assert not np.array_equal(np.asarray(masks[0]), np.asarray(masks[1]))


def test_select_lowest_entropy():
  entropy = jnp.asarray([[5.0, 1.0, 3.0, 1.0, 0.5]])
  known = jnp.asarray([[False, False, False, False, True]])
  # Known cell 4 is excluded; tie between 1 and 3 broken by index.
  np.testing.assert_array_equal(np.asarray(mt.select_lowest_entropy(entropy, known, 3)),
                                [[1, 3, 2]])


def test_entropy_adaptive_decode_is_reproducible_by_the_decoder():
  # Simulate encoder and decoder: both choose groups from their own predictions.
  # The decoder never sees undecoded values; it must pick the same groups.
  model = _mt(order="entropy")
  tokens = jnp.round(jax.random.normal(jax.random.key(0), (2, 16, C)) * 4)
  params = model.init(jax.random.key(1), tokens, jnp.zeros((2, 16), bool))

  def run(values_source):
    known = jnp.zeros((2, 16), bool)
    values = jnp.zeros_like(tokens)
    chosen = []
    for size in model.group_sizes:
      mixture = model.apply(params, values, known)
      _, pmf = gmm.coding_tables(mixture, 8, 1e-9)
      entropy = jnp.sum(gmm.table_entropy_bits(pmf), -1)
      idx = mt.select_lowest_entropy(entropy, known, int(size))
      chosen.append(np.asarray(idx))
      hit = jnp.zeros((2, 16), bool).at[jnp.arange(2)[:, None], idx].set(True)
      values = jnp.where(hit[..., None], values_source, values)
      known = known | hit
    assert bool(known.all())
    return np.concatenate(chosen, 1)

  encoder_groups = run(tokens)
  decoder_groups = run(tokens)  # decoder fills in the values as it decodes them
  np.testing.assert_array_equal(encoder_groups, decoder_groups)
  for row in encoder_groups:
    np.testing.assert_array_equal(np.sort(row), np.arange(16))
