"""Full model, loss, configs and the summary command."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2t_jax import configs
from m2t_jax import model as model_lib
from m2t_jax.app import summary
from m2t_jax.configs import get_config


@pytest.mark.parametrize("kind", ["mt", "m2t"])
def test_forward_and_gradients(kind):
  config = get_config(kind, "tiny")
  m = model_lib.build_model(config)
  params = model_lib.init_params(config)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 48, 3)) * 255

  def loss_fn(p):
    out = m.apply({"params": p}, x, rng=jax.random.key(1), train=True)
    return model_lib.rd_loss(out, 0.01), out

  # Jitted: op by op, the whole model compiles each op anew (~35 s on 2 cores).
  (loss, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert out["reconstruction"].shape == x.shape
  assert out["y_hat"].shape == (2, 2, 3, config.latent_channels)
  # Within float32 rounding: XLA may multiply by the reciprocal (1.05e-7 seen).
  np.testing.assert_allclose(np.asarray(out["bpp"]), np.asarray(out["bits"]) / (32 * 48),
                             rtol=1e-6)
  np.testing.assert_allclose(float(loss), float(jnp.mean(out["bpp"] + 0.01 * out["mse"])),
                             rtol=1e-6)
  clipped = jnp.clip(out["reconstruction"], 0, 255)
  mse = jnp.mean((clipped - x) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(out["psnr"]),
                             np.asarray(10 * jnp.log10(255**2 / mse)), rtol=1e-5)
  flat = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in flat)
  # Every part learns: encoder, decoder and the entropy model get gradients.
  for part in ("analysis", "synthesis", "entropy_model"):
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads[part])) > 0


def test_eval_rate_is_bits_of_rounded_latent():
  config = get_config("m2t", "tiny")
  m = model_lib.build_model(config)
  params = model_lib.init_params(config)
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3)) * 255
  out = m.apply({"params": params}, x)
  from m2t_jax.entropy import gmm, patches
  tokens, valid = patches.to_patches(out["y_hat"], config.patch_size)
  mix = m.apply({"params": params}, tokens,
                method=lambda mod, t: mod.entropy_model(t))
  bits = jnp.sum(gmm.bits(mix, tokens, config.gmm.prob_floor) * valid[..., None])
  np.testing.assert_allclose(float(out["bits"][0]), float(bits), rtol=1e-5)
  assert np.array_equal(np.asarray(out["y_hat"]), np.round(np.asarray(out["y_hat"])))


def test_lambda_warmup():
  config = get_config("m2t", "tiny")
  config.num_steps = 100
  assert float(model_lib.lmbda_at_step(config, 0)) == pytest.approx(10 * config.lmbda)
  assert float(model_lib.lmbda_at_step(config, 14)) == pytest.approx(10 * config.lmbda)
  assert float(model_lib.lmbda_at_step(config, 15)) == pytest.approx(config.lmbda)


@pytest.mark.parametrize("field,value,message", [
    ("transformer.num_heads", 5, "divisible"),
    ("schedule.order", "entropy", "MT only"),
    ("schedule.alpha", 0.5, "non-decreasing"),
    ("schedule.num_steps", 17, "Impossible schedule"),
    ("gmm.prob_floor", 0.5, "prob_floor"),
])
def test_impossible_configs_fail_clearly(field, value, message):
  config = get_config("m2t", "tiny")
  node, _, leaf = field.rpartition(".")
  setattr(config[node] if node else config, leaf, value)
  with pytest.raises(ValueError, match=message):
    model_lib.build_model(config)


def test_unknown_model_and_size():
  with pytest.raises(ValueError, match="Unknown model"):
    get_config("vct", "tiny")
  with pytest.raises(ValueError, match="Unknown config size"):
    get_config("m2t", "huge")


def test_paper_config_matches_spec():
  for kind in ("mt", "m2t"):
    c = get_config(kind, "paper")
    assert (c.elic.num_filters, c.latent_channels) == (256, 192)
    t = c.transformer
    assert (t.num_layers, t.d_model, t.num_heads, t.mlp_dim) == (12, 768, 12, 3072)
    assert (c.patch_size, c.schedule.num_steps, c.schedule.alpha) == (24, 12, 2.2)
    assert (c.gmm.num_mixtures, c.embed_delta) == (3, 5.0)
    assert (c.batch_size, c.crop_size, c.num_steps) == (32, 384, 1_000_000)
    counts = summary.param_counts(c)
    # ViT-B: 12 * (4 * 768^2 + 2 * 768 * 3072 + biases + 2 LayerNorms) + final LN.
    expected = 12 * (4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768) + 2 * 768
    assert counts["transformer"] == expected
    assert counts["head"] == 768 * 192 * 9 + 192 * 9
  nested = summary.param_counts(get_config("nested", "paper"))  # exits after 4, 8, 12
  assert nested["transformer"] == expected + 2 * 2 * 768  # + two exit LayerNorms
  assert nested["head"] == 3 * (768 * 192 * 9 + 192 * 9)  # a mixture head per exit


def test_config_file_and_summary_command():
  c = configs.load_config("m2t_jax/configs/mt.py:tiny")
  assert c.model == "mt" and c.size == "tiny"
  result = subprocess.run([sys.executable, "-m", "m2t_jax.app.cli", "summary", "m2t", "tiny"],
                          capture_output=True, text=True, check=True)
  for part in ("encoder", "decoder", "transformer", "head", "total"):
    assert part in result.stdout
  total = summary.param_counts(get_config("m2t", "tiny"))["total"]
  assert f"{total:,d}" in result.stdout
