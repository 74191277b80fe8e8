"""Codec: exact round trips through real range-coded bytes, on any image size."""


import ml_collections
import numpy as np
import pytest
from skimage import data as skdata

from m2t_jax import BitstreamError, Codec, ImageError, get_config
from m2t_jax.coding import bitstream

PHOTOS = {"astronaut": skdata.astronaut, "coffee": skdata.coffee, "chelsea": skdata.chelsea}
SIZES = [(1, 1), (1, 1000), (15, 17), (16, 16), (383, 385), (768, 512)]


@pytest.fixture(scope="module")
def codecs():
  cache = {}

  def get(kind, size, order=None, seed=0, narrow_radius=None):
    key = (kind, size, order, seed, narrow_radius)
    if key not in cache:
      config = get_config(kind, size)
      if order:
        config.schedule.order = order
      if narrow_radius is not None:
        config.gmm.narrow_radius = narrow_radius
      cache[key] = Codec.from_config(config, seed=seed)
    return cache[key]
  return get


def _photo_crop(name, h, w):
  photo = PHOTOS[name]()
  reps = (-(-h // photo.shape[0]), -(-w // photo.shape[1]), 1)
  return np.ascontiguousarray(np.tile(photo, reps)[:h, :w])


def _assert_exact_round_trip(codec, image, full=False):
  """Decoded y_hat equals encoded y_hat. With ``full``, also the whole public
  path: decompress() equals estimate()['reconstruction'] bit for bit."""
  data = codec.compress(image)
  y_hat = codec.analyze(image)
  np.testing.assert_array_equal(codec.decompress_latent(data), y_hat)
  if full:
    estimate = codec.estimate(image)
    np.testing.assert_array_equal(estimate["y_hat"], y_hat)
    decoded = codec.decompress(data)
    assert decoded.dtype == np.uint8 and decoded.shape == image.shape
    np.testing.assert_array_equal(decoded, estimate["reconstruction"])


@pytest.mark.parametrize("kind", ["m2t", "mt"])
# A whole photo with the small config (random weights: more elements in the
# wide tables than a trained model's), the tiny config on another (its many
# crop sizes are below). The small config on coffee is test_shipped's round
# trip of the shipped small models of both kinds (docs/results/test_suite.md).
@pytest.mark.parametrize("size,photo", [("small", "chelsea"), ("tiny", "coffee")])
def test_round_trip_photos(codecs, kind, size, photo):
  _assert_exact_round_trip(codecs(kind, size), PHOTOS[photo](), full=True)


@pytest.mark.parametrize("kind", ["m2t", "mt"])
@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_round_trip_sizes_tiny(codecs, kind, hw):
  _assert_exact_round_trip(codecs(kind, "tiny"), _photo_crop("chelsea", *hw), full=True)


@pytest.mark.parametrize("kind", ["m2t", "mt"])
# Each size compiles the small model anew (~10 s on 2 cores); the tiny config
# above takes every size, the small one a line, an odd size below one patch and
# an odd size of several patches.
@pytest.mark.parametrize("hw", [(1, 1000), (15, 17), (383, 385)],
                         ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_round_trip_sizes_small(codecs, kind, hw):
  _assert_exact_round_trip(codecs(kind, "small"), _photo_crop("coffee", *hw))


@pytest.mark.parametrize("hw", [(1, 1), (40, 70), (200, 100)], ids=str)
def test_round_trip_mt_entropy_adaptive(codecs, hw):
  _assert_exact_round_trip(codecs("mt", "tiny", order="entropy"), _photo_crop("astronaut", *hw),
                           full=True)


@pytest.mark.parametrize("kind", ["m2t", "mt"])
def test_extreme_latents_escape(codecs, kind):
  codec = codecs(kind, "tiny")
  image = _photo_crop("astronaut", 40, 56)
  y = codec.estimate(image)["y_hat"]
  rng = np.random.default_rng(0)
  for latent in (y * 1000, y * 1000 + rng.integers(-5, 5, y.shape),
                 np.full_like(y, 2**31 - 1), np.full_like(y, -(2**31) + 1),
                 rng.integers(-(2**30), 2**30, y.shape)):
    data = codec.compress_latent(latent, 40, 56)
    np.testing.assert_array_equal(codec.decompress_latent(data), latent)


@pytest.mark.parametrize("kind", ["m2t", "mt"])
def test_saturated_and_noise_images(codecs, kind):
  codec = codecs(kind, "tiny")
  rng = np.random.default_rng(1)
  for image in (np.zeros((33, 47, 3), np.uint8), np.full((33, 47, 3), 255, np.uint8),
                rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)):
    _assert_exact_round_trip(codec, image, full=True)


@pytest.mark.parametrize("kind", ["m2t", "mt"])
def test_real_size_matches_estimate(codecs, kind):
  # One table width: the bytes are the model's bits for any model, even a random
  # (miscalibrated) one. Two widths are checked on a trained model below.
  codec = codecs(kind, "small", narrow_radius=0)
  # Two full photos, of the sizes test_round_trip_photos compiles for already.
  for name in ("coffee", "chelsea"):
    image = PHOTOS[name]()
    data = codec.compress(image)
    est = codec.estimate(image)
    payload_bits = 8 * (len(data) - bitstream.HEADER_BYTES)
    # The payload's last 32-bit word is a fixed overhead, like the header.
    assert abs(payload_bits - est["bits"]) <= 0.01 * est["bits"] + 32, (name, payload_bits, est)
    assert est["bpp"] == pytest.approx(est["bits"] / (image.shape[0] * image.shape[1]))


def test_two_table_widths_cost_nothing_on_the_trained_model():
  # Narrow tables trust the model's calibration (an element whose narrow escape
  # mass is tiny is rarely escaped); on the shipped trained model the two widths
  # must cost no more than 0.2% over one width, and decode exactly.
  shipped = Codec.load()
  one, two = shipped.config.to_dict(), shipped.config.to_dict()
  one["gmm"]["narrow_radius"], two["gmm"]["narrow_radius"] = 0, 3
  two["gmm"]["wide_threshold"] = 2.0**-10
  one, two = (Codec(ml_collections.ConfigDict(c), shipped.params) for c in (one, two))
  image = PHOTOS["coffee"]()
  sizes = {}
  for name, codec in (("one", one), ("two", two)):
    data = codec.compress(image)
    np.testing.assert_array_equal(codec.decompress_latent(data), codec.analyze(image))
    sizes[name] = len(data)
  assert sizes["two"] <= 1.002 * sizes["one"], sizes


@pytest.mark.parametrize("kind", ["m2t", "mt"])
def test_photos_use_both_table_widths(codecs, kind):
  # The round trips above go through both batches (narrow and wide tables):
  # a random model on a photo has elements on either side of the threshold.
  from m2t_jax.coding import tables  # noqa: PLC0415
  from m2t_jax.coding.steps import CodingLoop  # noqa: PLC0415
  from m2t_jax.entropy import patches  # noqa: PLC0415
  codec = codecs(kind, "tiny")
  assert 0 < tables.narrow_radius(codec.config) < codec.config.gmm.table_radius
  tokens, valid = patches.to_patches(codec.analyze(PHOTOS["coffee"]()).astype(np.float32),
                                     codec.config.patch_size)
  tokens = np.asarray(tokens)
  seen = np.zeros(2, int)
  for step in CodingLoop(codec.entropy_model, codec.params["entropy_model"], codec.config,
                         np.asarray(valid)):
    wide = tables.wide_elements(step.pmf, step.todo, codec.config)
    seen += [int((step.todo & ~wide).sum()), int(wide.sum())]
    step.feed(step.take(tokens))
  assert seen.min() > 0, seen


def test_entropy_order_ranks_by_full_width_tables(codecs):
  # With two table widths, MT's entropy-adaptive order must still rank tokens
  # by their full (+-R) tables: a narrow table lumps the tail into the escape
  # and makes uncertain tokens look certain (a random model has many).
  from m2t_jax.coding import tables  # noqa: PLC0415
  from m2t_jax.coding.steps import CodingLoop  # noqa: PLC0415
  from m2t_jax.entropy import gmm, mt, patches  # noqa: PLC0415
  del codecs
  config = get_config("mt", "tiny")
  # Two equal groups: the first step already ranks half of every patch.
  config.schedule.order, config.schedule.num_steps, config.schedule.alpha = "entropy", 2, 1.0
  codec = Codec.from_config(config)
  config = codec.config
  _, valid = patches.to_patches(codec.analyze(PHOTOS["coffee"]()).astype(np.float32),
                                config.patch_size)
  valid = np.asarray(valid)
  zeros = np.zeros(valid.shape + (config.latent_channels,), np.float32)
  mixture = codec.entropy_model.apply({"params": codec.params["entropy_model"]}, zeros, ~valid)
  size = int(codec.entropy_model.group_sizes[0])
  ranked = {}
  for name, radius in (("full", config.gmm.table_radius),
                       ("narrow", tables.narrow_radius(config))):
    _, pmf = gmm.coding_tables(mixture, radius, config.gmm.prob_floor)
    entropy = np.asarray(gmm.table_entropy_bits(pmf)).sum(-1)
    ranked[name] = np.asarray(mt.select_lowest_entropy(entropy, ~valid, size))
  assert not np.array_equal(ranked["full"], ranked["narrow"])  # the test can tell
  first = next(iter(CodingLoop(codec.entropy_model, codec.params["entropy_model"],
                               config, valid)))
  cells = first.cells
  np.testing.assert_array_equal(cells, ranked["full"])


def test_foreign_model_and_other_kind_are_refused(codecs):
  image = _photo_crop("coffee", 20, 20)
  data = codecs("m2t", "tiny", seed=0).compress(image)
  with pytest.raises(BitstreamError, match="another model"):
    codecs("m2t", "tiny", seed=1).decompress(data)
  with pytest.raises(BitstreamError, match=r"model kind is 'm2t'"):
    codecs("mt", "tiny").decompress(data)
  for junk in (b"", b"\x89PNG\r\n\x1a\n" + bytes(100), "text"):
    with pytest.raises(BitstreamError):
      codecs("m2t", "tiny").decompress(junk)
  assert issubclass(BitstreamError, ValueError)


@pytest.mark.parametrize("bad", [
    np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
    np.zeros((4, 4, 3), np.float32), [[0, 0, 0]]], ids=str)
def test_bad_images_raise_image_error(codecs, bad):
  with pytest.raises(ImageError):
    codecs("m2t", "tiny").compress(bad)


def test_save_and_load(codecs, tmp_path):
  codec = codecs("mt", "tiny")
  codec.save(str(tmp_path / "model"))
  loaded = Codec.load(str(tmp_path / "model"))
  assert loaded.fingerprint == codec.fingerprint
  image = _photo_crop("coffee", 20, 30)
  np.testing.assert_array_equal(loaded.decompress(codec.compress(image)),
                                codec.decompress(codec.compress(image)))
  with pytest.raises(FileNotFoundError, match="not a saved"):
    Codec.load("no-such-model-or-folder")
  with pytest.raises(FileNotFoundError, match="not a saved"):
    Codec.load(str(tmp_path))
