"""Encoder-side latent refinement (m2t_jax/refine.py, Codec.analyze/compress)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import skimage.data

from m2t_jax import Codec, get_config
from m2t_jax import model as model_lib
from m2t_jax.app import cli
from m2t_jax.entropy import registry
from m2t_jax import refine
from m2t_jax.refine import RefineSettings
from conftest import load_experiment


@pytest.fixture(scope="module")
def tiny():
  return Codec.from_config(get_config("m2t", "tiny"), seed=0)


@pytest.fixture(scope="module")
def image():
  return skimage.data.coffee()[100:164, 200:280]  # 64 x 80


def _rd_cost(codec, image, data):
  """Real bytes and the decoded 8-bit image: bpp + lambda * MSE (0..255)."""
  decoded = codec.decompress(data)
  mse = np.mean(np.square(decoded.astype(np.float64) - image))
  return 8 * len(data) / image[..., 0].size + float(codec.config.lmbda) * mse


def test_no_refinement_is_the_rounded_analysis(tiny, image):
  # Independently of Codec.analyze: round(E(x)) of the edge-padded image.
  x = model_lib.pad_to_multiple(jnp.asarray(image, jnp.float32)[None])
  y = tiny.model.apply({"params": tiny.params}, x, method=model_lib.CompressionModel.encode)
  expected = np.asarray(jnp.round(y)).astype(np.int64)
  assert np.array_equal(tiny.analyze(image), expected)  # the API's default: off
  assert np.array_equal(tiny.analyze(image, refine=0), expected)


def test_the_trained_model_codes_a_refined_latent_at_a_lower_real_rd_cost(image):
  codec = Codec.load()  # the shipped default: E is trained, so its latent is a real start
  plain = codec.compress(image)
  refined = codec.compress(image, refine=RefineSettings(steps=8, learning_rate=0.005))
  assert refined != plain
  assert _rd_cost(codec, image, refined) < _rd_cost(codec, image, plain)


def test_a_refined_stream_decodes_anywhere_and_matches_the_estimate(tiny, image):
  settings = RefineSettings(steps=3, learning_rate=0.05)
  data = tiny.compress(image, refine=settings)
  estimate = tiny.estimate(image, refine=settings)  # deterministic: the same y_hat
  # A decoder knows nothing of refinement: a fresh codec of the same model decodes.
  fresh = Codec(tiny.config, tiny.params)
  decoded = fresh.decompress(data)
  assert np.array_equal(decoded, estimate["reconstruction"])
  assert np.array_equal(fresh.decompress_latent(data), estimate["y_hat"])


def test_refinement_is_skipped_above_refine_max_pixels(image):
  codec = Codec.from_config(get_config("m2t", "tiny"), seed=0)
  codec.refine = RefineSettings(steps=50, learning_rate=0.5)
  codec.refine_max_pixels = image.shape[0] * image.shape[1] - 1
  assert np.array_equal(codec.analyze(image), codec.analyze(image, refine=0))
  codec.refine_max_pixels = image.shape[0] * image.shape[1]
  codec.refine = RefineSettings(steps=2, learning_rate=0.5)  # a large step: y moves
  assert not np.array_equal(codec.analyze(image), codec.analyze(image, refine=0))


@pytest.mark.parametrize("bad, error", [
    (dict(steps=-1), ValueError), (dict(steps=2.5), ValueError),
    (dict(learning_rate=0.0), ValueError), (dict(lmbda=-1.0), ValueError),
    (dict(rate_target="noisy"), ValueError)])
def test_impossible_settings_are_refused(bad, error):
  with pytest.raises(error):
    RefineSettings(**bad)


def test_refine_must_be_a_step_count_or_settings(tiny, image):
  for bad in (True, "10", 1.5):
    with pytest.raises(TypeError, match="refine must be"):
      tiny.compress(image, refine=bad)


def test_the_command_line_refines_by_default_and_zero_turns_it_off(tmp_path, image):
  from PIL import Image
  Image.fromarray(image).save(tmp_path / "in.png")
  common = ["--config", "m2t:tiny", "--refine-lr", "0.5"]
  assert cli.DEFAULT_REFINE_STEPS > 0
  assert cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / "a.m2t"), *common,
                   "--refine-steps", "2"]) == 0
  assert cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / "b.m2t"), *common,
                   "--refine-steps", "0"]) == 0
  tiny = Codec.from_config(get_config("m2t", "tiny"), seed=0)
  assert (tmp_path / "b.m2t").read_bytes() == tiny.compress(image)
  assert (tmp_path / "a.m2t").read_bytes() == tiny.compress(
      image, refine=RefineSettings(steps=2, learning_rate=0.5))
  assert cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / "c.m2t"),
                   "--config", "m2t:tiny", "--refine-steps", "-3"]) == 1
  # --refine-lmbda is the trade-off refinement optimises: another lambda, another latent.
  assert cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / "d.m2t"), *common,
                   "--refine-steps", "2", "--refine-lmbda", "0.5"]) == 0
  assert (tmp_path / "d.m2t").read_bytes() == tiny.compress(
      image, refine=RefineSettings(steps=2, learning_rate=0.5, lmbda=0.5))
  assert cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / "e.m2t"),
                   "--config", "m2t:tiny", "--refine-lmbda", "0"]) == 1
  assert not (tmp_path / "c.m2t").exists() and not (tmp_path / "e.m2t").exists()


def test_refine_sweep_reports_the_change_against_the_unrefined_latent(tmp_path, tiny, image):
  import json

  from PIL import Image
  refine_sweep = load_experiment("refine_sweep")
  tiny.save(str(tmp_path / "model"))
  Image.fromarray(image).save(tmp_path / "a.png")
  out = tmp_path / "sweep.json"
  assert refine_sweep.main(["--model", str(tmp_path / "model"), "--images", str(tmp_path),
                            "--only", "a.png", "--settings", "0:0.01:rounded",
                            "2:0.5:continuous", "--output-dir", str(tmp_path),
                            "--output-name", "sweep"]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert [r["setting"] for r in rows] == ["0:0.01:rounded", "2:0.5:continuous"]
  # Zero steps is E's latent: no change at all; real bytes as compress writes them.
  assert rows[0]["loss_change_pct"] == 0 and rows[0]["bpp_change_pct"] == 0
  assert rows[0]["unrefined"]["bpp"] == 8 * len(tiny.compress(image)) / image[..., 0].size
  # Refinement keeps the best latent it saw, E's included: never a higher loss.
  assert rows[1]["refined"]["loss"] <= rows[1]["unrefined"]["loss"] + 1e-6


@pytest.mark.parametrize("kind", registry.names())
def test_every_kind_refines_and_decodes_to_its_estimate(kind, image):
  codec = Codec.from_config(get_config(kind, "tiny"), seed=0)
  settings = RefineSettings(steps=2, learning_rate=0.5)
  data = codec.compress(image, refine=settings)
  assert np.array_equal(codec.decompress(data),
                        codec.estimate(image, refine=settings)["reconstruction"])


# --- effort levels ------------------------------------------------------------------


def _decode(codec, y_hat, height, width):
  """D(y_hat) as the decoder must give it: rounded, clipped, cropped uint8."""
  x = codec.model.apply({"params": codec.params}, jnp.asarray(y_hat, jnp.float32),
                        method=model_lib.CompressionModel.decode)
  return np.asarray(jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8))[0, :height, :width]


def _estimated_loss(codec, image, y_hat):
  """bpp of the entropy model's estimate + lambda * MSE (0..255) of D(y_hat),
  written out here from the model's two passes."""
  h, w = image.shape[:2]
  y_hat = jnp.asarray(y_hat, jnp.float32)
  bits = codec.model.apply({"params": codec.params}, y_hat, y_hat,
                           method=model_lib.CompressionModel.latent_bits)[0]
  x = codec.model.apply({"params": codec.params}, y_hat,
                        method=model_lib.CompressionModel.decode)[0, :h, :w]
  mse = jnp.mean(jnp.square(x - jnp.asarray(image, jnp.float32)))
  return float(bits) / (h * w) + float(codec.config.lmbda) * float(mse)


def test_every_effort_level_codes_a_stream_that_decodes_to_d_of_its_latent(tiny, image):
  h, w = image.shape[:2]
  fresh = Codec(tiny.config, tiny.params)  # a decoder that knows nothing of efforts
  latents = []
  for effort in range(refine.MAX_EFFORT + 1):
    data = tiny.compress(image, effort=effort)
    y_hat = fresh.decompress_latent(data)
    assert np.array_equal(y_hat, tiny.analyze(image, effort=effort))
    assert np.array_equal(fresh.decompress(data), _decode(tiny, y_hat, h, w))
    latents.append(y_hat)
  assert np.array_equal(latents[0], tiny.analyze(image, refine=0))  # 0: E's latent


def test_effort_levels_search_more_as_they_rise():
  assert refine.EFFORTS[0].steps == 0
  steps = [s.steps for s in refine.EFFORTS]
  assert steps == sorted(steps) and len(set(steps)) == len(steps)
  assert 0 < refine.DEFAULT_EFFORT <= refine.MAX_EFFORT
  assert RefineSettings.for_effort(2, lmbda=0.5) == dataclasses.replace(
      refine.EFFORTS[2], lmbda=0.5)


def test_no_effort_returns_a_latent_of_higher_estimated_loss_than_effort_0(image):
  # The trained model and the random one; estimated losses computed here.
  for codec in (Codec.load(), Codec.from_config(get_config("m2t", "tiny"), seed=1)):
    base = _estimated_loss(codec, image, codec.analyze(image, effort=0))
    for effort in range(1, refine.MAX_EFFORT + 1):
      assert _estimated_loss(codec, image, codec.analyze(image, effort=effort)) <= base + 1e-5


def test_a_search_that_only_makes_things_worse_returns_es_latent(tiny, image):
  # Steps of 100 latent units throw every element far from E's: far more bits.
  wild = RefineSettings(steps=2, learning_rate=100.0)
  assert np.array_equal(tiny.analyze(image, refine=wild), tiny.analyze(image, refine=0))
  losses = {}
  h, w = image.shape[:2]
  x = model_lib.pad_to_multiple(jnp.asarray(image, jnp.float32)[None])
  y = tiny.model.apply({"params": tiny.params}, x, method=model_lib.CompressionModel.encode)
  refine.refine(tiny.model, tiny.params, x, y, h, w, float(tiny.config.lmbda), wild,
                losses=losses)
  assert losses["loss"] == losses["unrefined_loss"]
  assert losses["loss"] == pytest.approx(_estimated_loss(tiny, image, jnp.round(y)), rel=1e-5)


def _reference_descent(codec, image, settings, lmbda):
  """Adam steps written plainly: optax's Adam and cosine schedule, one eager
  gradient per step, the lowest surrogate kept. (last, best)."""
  h, w = image.shape[:2]
  x = model_lib.pad_to_multiple(jnp.asarray(image, jnp.float32)[None])
  y = codec.model.apply({"params": codec.params}, x, method=model_lib.CompressionModel.encode)
  surrogate = refine.surrogate_fn(codec.model, codec.params, x, h, w, lmbda,
                                  settings.rate_target)
  optimizer = optax.scale_by_adam()
  schedule = optax.cosine_decay_schedule(settings.learning_rate, settings.steps)
  state, current, best, best_value = optimizer.init(y), y, y, np.inf
  for i in range(settings.steps):
    value, grad = jax.value_and_grad(surrogate)(current)
    if float(value) < best_value:
      best, best_value = current, float(value)
    direction, state = optimizer.update(grad, state, current)
    current = current - schedule(i) * direction
  return x, y, current, best


@pytest.mark.parametrize("loop", refine.LOOPS)
def test_the_search_takes_the_steps_of_a_plain_adam_loop(tiny, image, loop):
  settings = RefineSettings(steps=3, learning_rate=0.3, loop=loop)
  lmbda = float(tiny.config.lmbda)
  x, y, last, best = _reference_descent(tiny, image, settings, lmbda)
  h, w = image.shape[:2]
  refiner = refine.make_refiner(tiny.model, h, w, lmbda, settings.rate_target)
  carry = refine.descend(refiner, tiny.params, x, y, settings)
  assert float(jnp.max(jnp.abs(last - y))) > 0.1  # the steps moved y
  np.testing.assert_allclose(carry[0], last, atol=1e-4)
  np.testing.assert_allclose(carry[2], best, atol=1e-4)


def test_both_loops_code_the_same_latent(tiny, image):
  stepped, compiled = (tiny.analyze(image, refine=RefineSettings(steps=4, learning_rate=0.3,
                                                                  loop=loop))
                       for loop in ("stepped", "compiled"))
  assert not np.array_equal(stepped, tiny.analyze(image, refine=0))
  assert np.mean(stepped == compiled) > 0.999  # float sums may flip a .5 rounding


@pytest.mark.parametrize("bad", [-1, refine.MAX_EFFORT + 1, 1.5, True, "2", None])
def test_bad_effort_values_are_refused(bad):
  with pytest.raises(ValueError, match="effort must be an integer"):
    RefineSettings.for_effort(bad)


def test_the_api_refuses_a_bad_effort_and_effort_with_refine(tiny, image):
  with pytest.raises(ValueError, match="effort must be an integer"):
    tiny.compress(image, effort=-1)
  with pytest.raises(ValueError, match="not both"):
    tiny.compress(image, refine=2, effort=1)
  with pytest.raises(ValueError, match="effort must be an integer"):
    Codec(tiny.config, tiny.params, effort=9)
  codec = Codec(tiny.config, tiny.params, effort=2)
  assert codec.refine == refine.EFFORTS[2]


def test_the_command_line_effort(tmp_path, image, capsys):
  from PIL import Image
  Image.fromarray(image).save(tmp_path / "in.png")
  tiny = Codec.from_config(get_config("m2t", "tiny"), seed=0)

  def compress(name, *flags):
    return cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / name),
                     "--config", "m2t:tiny", *flags])

  assert compress("0.m2t", "--effort", "0") == 0
  assert (tmp_path / "0.m2t").read_bytes() == tiny.compress(image)
  assert compress("2.m2t", "--effort", "2") == 0
  assert (tmp_path / "2.m2t").read_bytes() == tiny.compress(image, effort=2)
  assert compress("default.m2t") == 0
  assert (tmp_path / "default.m2t").read_bytes() == tiny.compress(
      image, effort=refine.DEFAULT_EFFORT)
  # The fine-grained flags override the level's fields.
  assert compress("2s.m2t", "--effort", "2", "--refine-steps", "1") == 0
  assert (tmp_path / "2s.m2t").read_bytes() == tiny.compress(
      image, refine=dataclasses.replace(refine.EFFORTS[2], steps=1))
  capsys.readouterr()
  for bad in ("-1", str(refine.MAX_EFFORT + 1), "1.5", "fast"):
    assert compress("bad.m2t", "--effort", bad) == 1
    err = capsys.readouterr().err
    assert err.startswith("m2t: error: --effort") and err.count("\n") == 1, err
  assert not (tmp_path / "bad.m2t").exists()
  # The help names the levels' range and the default as refine.py defines them.
  help_text = " ".join(cli._parser()._subparsers._group_actions[0].choices["compress"]
                       .format_help().split())
  assert (f"0 to {refine.MAX_EFFORT} (default {refine.DEFAULT_EFFORT})" in help_text)


def test_the_effort_study_measures_every_level_against_effort_0(tmp_path, tiny, image):
  import json

  from PIL import Image

  from m2t_jax.evaluation import splits
  effort = load_experiment("effort")
  tiny.save(str(tmp_path / "model"))
  photos = tmp_path / "photos"
  photos.mkdir()
  names = [f"p{i}.png" for i in range(40)]
  val = next(n for n in names if splits.split_of(n) == "val")
  train = next(n for n in names if splits.split_of(n) == "train")
  for name in (val, train):
    Image.fromarray(image).save(photos / name)
  assert effort.main(["--model", str(tmp_path / "model"), "--images", str(photos),
                      "--efforts", "0", "1", "--settings", "2:0.5:continuous",
                      "--output-dir", str(tmp_path), "--output-name", "e"]) == 0
  doc = json.loads((tmp_path / "e.json").read_text())
  assert {r["image"] for r in doc["rows"]} == {val}  # the validation split only
  by_level = {r["level"]: r for r in doc["rows"]}
  assert list(by_level) == ["0", "1", "2:0.5:continuous"]
  assert by_level["0"]["bpp"] == 8 * len(tiny.compress(image)) / image[..., 0].size
  assert all(r["decoded_equals_estimate"] for r in doc["rows"])
  for r in doc["rows"]:
    assert r["loss"] <= by_level["0"]["loss"] + 1e-5
  assert doc["summary"][0]["rate_change_pct"] == 0
  assert "bd_rate_pct" not in doc["summary"][0]  # one model: no curve
  assert (tmp_path / "e.md").read_text().count("\n| ") == 4  # header + three levels


def test_the_effort_study_bd_rate_of_a_curve_at_nine_tenths_of_the_rate():
  effort = load_experiment("effort")
  rows = []
  for m, (bpp, psnr) in enumerate([(0.2, 28.0), (0.4, 31.0), (0.8, 34.0)]):
    for level, scale in (("0", 1.0), ("1", 0.9)):
      rows.append({"image": "a.png", "model": f"m{m}", "level": level, "settings": level,
                   "encode_s_per_mp": 1.0, "bpp": bpp * scale, "psnr": psnr,
                   "loss": 1.0, "real_loss": 1.0, "decoded_equals_estimate": True})
  summary = effort.summarise(rows, ["0", "1"], ["m0", "m1", "m2"])
  assert summary[0]["bd_rate_pct"] == pytest.approx(0, abs=1e-9)
  assert summary[1]["bd_rate_pct"] == pytest.approx(-10, abs=1e-6)
  assert summary[1]["bd_rate_mean_curve_pct"] == pytest.approx(-10, abs=1e-6)
