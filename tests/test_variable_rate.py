"""Variable rate: one model for every quality, the quality in the stream, coding
to a target size (m2t_jax/model.py, m2t_jax/rate_target.py).

The monotonicity and target tests use a tiny variable-rate M2T trained for
2,500 steps on the training split of a photo corpus (tests/data/models/; its
config.json says how), so that they check a model that learned its gains, not
the gains' initial values.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data as skdata

from m2t_jax import BitstreamError, Codec, get_config
from m2t_jax import model as model_lib
from m2t_jax import rate_target
from m2t_jax.app import cli
from m2t_jax.coding import bitstream, rate_code

TRAINED = os.path.join(os.path.dirname(__file__), "data", "models", "m2t-tiny-variable-rate")
KINDS = ("m2t", "mt", "grouped", "nested")


@pytest.fixture(scope="module")
def random_codecs():
  cache = {}

  def get(kind):
    if kind not in cache:
      cache[kind] = Codec.from_config(get_config(kind, "tiny,variable_rate"))
    return cache[kind]
  return get


@pytest.fixture(scope="module")
def trained():
  return Codec.load(TRAINED)


def _crop(photo, h, w):
  return np.ascontiguousarray(photo[:h, :w])


@pytest.mark.parametrize("kind", KINDS)
def test_round_trips_at_several_qualities(random_codecs, kind):
  codec = random_codecs(kind)
  image = _crop(skdata.astronaut(), 48, 80)
  streams = {}
  for quality in (0, 33.3, 100):
    data = codec.compress(image, quality=quality)
    header = codec.read_header(data)
    assert header.rate_code == round(quality / 100 * bitstream.RATE_CODE_MAX)
    assert abs(rate_code.quality_of_code(header.rate_code) - quality) <= (
        100 / bitstream.RATE_CODE_MAX)
    estimate = codec.estimate(image, quality=quality)
    np.testing.assert_array_equal(codec.decompress_latent(data), estimate["y_hat"])
    np.testing.assert_array_equal(codec.decompress(data), estimate["reconstruction"])
    streams[quality] = data
  # The gains make the latents differ between qualities (so does the stream).
  assert len({bytes(s[bitstream.HEADER_BYTES - 4:]) for s in streams.values()}) == 3


def test_the_decoder_takes_the_quality_from_the_stream(random_codecs):
  codec = random_codecs("m2t")
  image = _crop(skdata.coffee(), 40, 56)
  data = codec.compress(image, quality=80)
  codec.quality = 10  # the decoder's own setting does not matter
  try:
    np.testing.assert_array_equal(codec.decompress(data),
                                  codec.estimate(image, quality=80)["reconstruction"])
  finally:
    codec.quality = None


def test_a_fixed_rate_model_is_what_a_variable_rate_one_starts_from():
  """With its gains at 1 and its rate embedding at zero (its initial value), a
  variable-rate model computes exactly what the fixed-rate model of the same
  parameters does, at every level: warm-starting from a trained fixed-rate model
  starts from its operating point."""
  fixed_config = get_config("m2t", "tiny")
  variable_config = get_config("m2t", "tiny,variable_rate")
  params = model_lib.init_params(fixed_config)
  variable = dict(model_lib.init_params(variable_config))
  assert not np.any(variable["entropy_model"]["rate_embedding"]["embedding"])
  variable.update(analysis=params["analysis"], synthesis=params["synthesis"],
                  log_gain=jnp.zeros_like(variable["log_gain"]),
                  log_inverse_gain=jnp.zeros_like(variable["log_inverse_gain"]))
  entropy = dict(params["entropy_model"])
  entropy["rate_embedding"] = variable["entropy_model"]["rate_embedding"]
  variable["entropy_model"] = entropy
  image = jnp.asarray(_crop(skdata.chelsea(), 64, 64)[None], jnp.float32)
  want = model_lib.build_model(fixed_config).apply({"params": params}, image)
  model = model_lib.build_model(variable_config)
  for level in (0.0, 0.4, 1.0):
    got = model.apply({"params": variable}, image, rate_level=jnp.array([level]))
    np.testing.assert_array_equal(got["y_hat"], want["y_hat"])
    np.testing.assert_allclose(got["bits"], want["bits"], rtol=1e-6)
    np.testing.assert_allclose(got["reconstruction"], want["reconstruction"], rtol=1e-6)


def test_the_rate_level_reaches_every_kind(random_codecs):
  """A nonzero rate embedding changes the predicted bits of the same tokens
  with the level, in the one-pass rate and in the decode loop alike (MT)."""
  for kind in KINDS:
    codec = random_codecs(kind)
    coder = codec.entropy_coder
    params = jax.tree_util.tree_map(lambda a: a, coder.params)
    table = params["rate_embedding"]["embedding"]
    params["rate_embedding"]["embedding"] = jnp.asarray(
        np.random.default_rng(0).normal(0, 1, table.shape), jnp.float32)
    y_hat = np.random.default_rng(1).integers(-3, 4, (1, 4, 4, codec.config.latent_channels))
    original = coder.params
    coder.params = params
    try:
      low, high = coder.estimate_bits(y_hat, rate_code=0), coder.estimate_bits(
          y_hat, rate_code=bitstream.RATE_CODE_MAX)
      data = coder.compress(y_hat[0], rate_code=1234)
      np.testing.assert_array_equal(coder.decompress(data), y_hat[0])
    finally:
      coder.params = original
    assert low != high, kind


def test_training_draws_a_lambda_per_example():
  config = get_config("m2t", "tiny,variable_rate")
  model = model_lib.build_model(config)
  params = model_lib.init_params(config)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)), jnp.float32)
  out = model.apply({"params": params}, images, jax.random.key(3), train=True)
  lmbda = np.asarray(out["lmbda"])
  v = config.variable_rate
  assert np.all((lmbda >= v.lmbda_min) & (lmbda <= v.lmbda_max))
  assert len(np.unique(lmbda)) == 16  # one per example
  np.testing.assert_allclose(lmbda, model_lib.lmbda_of_level(config, np.asarray(out["rate_level"])),
                             rtol=1e-5)
  # The loss weighs each example's MSE by its own lambda (times the warm-up factor).
  loss = model_lib.rd_loss(out, model_lib.example_lmbda(config, out, 10 * config.lmbda))
  want = np.mean(np.asarray(out["bpp"]) + 10 * lmbda * np.asarray(out["mse"]))
  np.testing.assert_allclose(loss, want, rtol=1e-5)


@pytest.mark.parametrize("bad", [-1, 100.5, float("nan"), float("inf"), True, "50"])
def test_bad_qualities_are_refused(random_codecs, bad):
  codec = random_codecs("m2t")
  with pytest.raises(ValueError, match="quality"):
    codec.compress(_crop(skdata.coffee(), 16, 16), quality=bad)


@pytest.mark.parametrize("kwargs", [{"target_bpp": 0}, {"target_size": 0},
                                    {"target_bpp": float("nan")},
                                    {"target_size": float("inf")}, {"target_bpp": -1},
                                    {"target_bpp": 0.5, "target_size": 100}])
def test_bad_targets_are_refused(random_codecs, kwargs):
  with pytest.raises(ValueError, match="target"):
    random_codecs("m2t").compress_to_target(_crop(skdata.coffee(), 16, 16), **kwargs)


def test_fixed_rate_models_refuse_qualities_and_streams_with_one():
  fixed = Codec.from_config(get_config("m2t", "tiny"))
  image = _crop(skdata.coffee(), 16, 16)
  with pytest.raises(ValueError, match="one rate"):
    fixed.compress(image, quality=50)
  with pytest.raises(ValueError, match="one rate"):
    fixed.compress(image, target_bpp=0.5)
  data = fixed.compress(image)
  assert fixed.read_header(data).rate_code is None
  # The same stream with a rate code written in (CRC recomputed) is refused.
  header, payload = bitstream.unpack(data)
  forged = bitstream.pack(header.__class__(**{**header.__dict__, "rate_code": 7}), payload)
  with pytest.raises(BitstreamError, match="rate level"):
    fixed.decompress(forged)


def test_a_variable_rate_model_refuses_a_stream_without_a_quality(random_codecs):
  codec = random_codecs("m2t")
  data = codec.compress(_crop(skdata.coffee(), 16, 16), quality=50)
  header, payload = bitstream.unpack(data)
  forged = bitstream.pack(header.__class__(**{**header.__dict__, "rate_code": None}), payload)
  with pytest.raises(BitstreamError, match="no rate level"):
    codec.decompress(forged)


def test_rate_and_quality_fall_with_quality(trained):
  """The trained model: on real photos, bits and PSNR both rise with quality."""
  from m2t_jax.evaluation import metrics
  for photo in (skdata.astronaut(), skdata.coffee()):
    image = _crop(photo, 128, 192)
    sizes, psnrs = [], []
    for quality in (0, 25, 50, 75, 100):
      data = trained.compress(image, quality=quality)
      decoded = trained.decompress(data)
      sizes.append(len(data))
      mse = np.mean(np.square(decoded.astype(np.float64) - image))
      psnrs.append(float(metrics.psnr_from_mse(mse)))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes
    assert psnrs == sorted(psnrs) and psnrs[-1] - psnrs[0] > 1.0, psnrs


def test_target_bpp_is_hit_within_tolerance(trained):
  image = _crop(skdata.chelsea(), 192, 256)
  low = 8 * len(trained.compress(image, quality=10)) / image[..., 0].size
  high = 8 * len(trained.compress(image, quality=90)) / image[..., 0].size
  target = float(np.sqrt(low * high))  # inside the model's range
  data, report = trained.compress_to_target(image, target_bpp=target)
  bpp = 8 * len(data) / image[..., 0].size
  assert report.reached and abs(bpp - target) <= rate_target.TOLERANCE * target
  assert report.size_bytes == len(data)
  assert abs(rate_code.quality_of_code(trained.read_header(data).rate_code) - report.quality) < 0.01
  np.testing.assert_array_equal(
      trained.decompress(data), trained.estimate(image, quality=report.quality)["reconstruction"])
  # A target of a byte count, the same way.
  data, report = trained.compress_to_target(image, target_size=len(data))
  assert report.reached


def test_unreachable_targets_are_said(trained):
  image = _crop(skdata.chelsea(), 64, 64)
  data, report = trained.compress_to_target(image, target_size=10)  # below any stream
  assert not report.reached and report.quality == 0.0
  assert "not reachable" in report.message and len(data) == report.size_bytes
  with pytest.warns(UserWarning, match="not reachable"):
    trained.compress(image, target_bpp=1000.0)


def test_cli_quality_target_and_info(trained, tmp_path, capsys):
  src = tmp_path / "in.png"
  from PIL import Image
  Image.fromarray(_crop(skdata.coffee(), 96, 128)).save(src)
  out = tmp_path / "q.m2t"
  assert cli.main(["compress", str(src), str(out), "--checkpoint", TRAINED,
                   "--quality", "70", "--effort", "0"]) == 0
  assert "at quality 70.00" in capsys.readouterr().out
  assert cli.main(["info", str(out)]) == 0
  assert "quality:     70.00" in capsys.readouterr().out
  assert cli.main(["compress", str(src), str(out), "--checkpoint", TRAINED,
                   "--target-size", "200000", "--effort", "0"]) == 0
  captured = capsys.readouterr()
  assert "not reachable" in captured.err and "at quality 100.00" in captured.out
  assert cli.main(["compress", str(src), str(out), "--config", "m2t:tiny",
                   "--quality", "50"]) == 1
  assert "one rate" in capsys.readouterr().err
  assert cli.main(["compress", str(src), str(out), "--checkpoint", TRAINED,
                   "--quality", "101"]) == 1


def test_eval_draws_a_curve_from_one_model(tmp_path):
  import json
  from PIL import Image
  folder = tmp_path / "images"
  folder.mkdir()
  Image.fromarray(_crop(skdata.astronaut(), 64, 96)).save(folder / "a.png")
  output = tmp_path / "rd.json"
  assert cli.main(["eval", "--images", str(folder), "--checkpoint", TRAINED,
                   "--output", str(output), "--effort", "0", "--qualities", "20", "80",
                   "--no-progress", "--no-warmup"]) == 0
  results = json.loads(output.read_text())["results"]
  # Sorted by bpp: rate rises with quality (stored as the stream's rate code).
  np.testing.assert_allclose(results["quality"], [20.0, 80.0], atol=0.01)
  assert results["bpp"][0] < results["bpp"][1]
  lmbdas = [model_lib.lmbda_of_level(trained_config(), q / 100) for q in (20, 80)]
  np.testing.assert_allclose(results["lmbda"], lmbdas, rtol=1e-3)


def trained_config():
  from m2t_jax import saved_model
  return saved_model.load_params(TRAINED)[0]


def test_a_latent_coder_of_a_variable_rate_model_needs_a_rate_code():
  from m2t_jax.coding.entropy_coder import EntropyCoder
  coder = EntropyCoder.from_config(get_config("grouped", "tiny,variable_rate"))
  y = np.random.default_rng(0).integers(-2, 3, (5, 6, coder.latent_channels))
  data = coder.compress(y, rate_code=100)
  assert coder.unpack(data)[0].rate_code == 100
  np.testing.assert_array_equal(coder.decompress(data), y)
  with pytest.raises(ValueError, match="rate code"):
    coder.compress(y)


def test_the_effort_study_measures_a_variable_rate_model_at_its_quality(trained):
  # experiments/effort.py weighs distortion with the lambda of codec.quality and
  # conditions the model on its level: its RD loss of E's latent is the
  # estimate's bpp + lambda * MSE at that quality, and moves with the quality.
  from experiments import effort  # noqa: PLC0415
  from m2t_jax import refine  # noqa: PLC0415
  image = _crop(skdata.coffee(), 64, 96)
  losses = {}
  for quality in (20, 80):
    codec = Codec(trained.config, trained.params)
    codec.quality = quality
    row = effort.measure(codec, image, refine.RefineSettings(steps=0))
    estimate = codec.estimate(image)
    mse = float(np.mean(np.square(estimate["reconstruction"].astype(np.float64) - image)))
    expected = estimate["bpp"] + codec.lmbda * mse
    assert row["loss"] == pytest.approx(expected, rel=0.02), (quality, row, expected)
    assert row["decoded_equals_estimate"]
    losses[quality] = row["loss"]
  assert losses[20] != pytest.approx(losses[80], rel=0.05)
