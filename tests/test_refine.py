"""Encoder-side latent refinement (m2t_jax/refine.py, Codec.analyze/compress)."""

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

from m2t_jax import Codec, get_config
from m2t_jax import model as model_lib
from m2t_jax.app import cli
from m2t_jax.entropy import registry
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
