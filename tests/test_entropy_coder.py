"""EntropyCoder: integer latents of any size round-trip exactly, bad latents are
refused, and Codec is the autoencoder plus an EntropyCoder."""

import numpy as np
import pytest
from skimage import data

from m2t_jax import BitstreamError, Codec, EntropyCoder, LatentError, get_config
from m2t_jax.coding import bitstream


@pytest.fixture(scope="module", params=["mt", "m2t"])
def coder(request):
  return EntropyCoder.from_config(get_config(request.param, "tiny"), seed=0)


@pytest.mark.parametrize("h, w", [(1, 1), (3, 50), (37, 23)])
def test_random_latents_round_trip(coder, h, w):
  rng = np.random.default_rng(h * 100 + w)
  c = coder.latent_channels
  y = rng.integers(-6, 7, (h, w, c))
  # Extreme values take the escape path (far outside any table window).
  y.flat[rng.choice(y.size, min(5, y.size), replace=False)] = [
      2**31 - 1, -(2**31), 40_000, -777, 25][:min(5, y.size)]
  stream = coder.compress(y)
  out = coder.decompress(stream)
  assert out.shape == (h, w, c) and out.dtype == np.int64
  np.testing.assert_array_equal(out, y)
  header = bitstream.unpack(stream)[0]
  assert (header.height, header.width) == (h, w)


def test_other_integer_dtypes_and_integral_floats(coder):
  y = np.arange(2 * 3 * coder.latent_channels).reshape(2, 3, -1) % 7 - 3
  for arr in (y.astype(np.int8), y.astype(np.uint8) * 0 + 4, y.astype(np.float32)):
    np.testing.assert_array_equal(coder.decompress(coder.compress(arr)), arr)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3)), "shape"),
    (np.zeros((0, 3, 8)), "shape"),
    (np.zeros((2, 3, 5)), "shape"),
    (np.full((2, 2, 8), 0.5), "non-integer"),
    (np.full((2, 2, 8), np.nan), "non-finite"),
    (np.full((2, 2, 8), 2**31), "int32"),
    (np.full((2, 2, 8), -(2**31) - 1, np.int64), "int32"),
    (np.zeros((2, 2, 8), bool), "dtype"),
])
def test_bad_latents_are_refused(coder, bad, match):
  with pytest.raises(LatentError, match=match):
    coder.compress(bad)


def test_streams_of_another_coder_are_refused(coder):
  other = EntropyCoder.from_config(coder.config, seed=1)
  stream = other.compress(np.zeros((2, 2, coder.latent_channels), int))
  with pytest.raises(BitstreamError, match="another model"):
    coder.decompress(stream)


def test_codec_is_autoencoder_plus_entropy_coder():
  codec = Codec.from_config(get_config("m2t", "tiny"), seed=0)
  image = data.coffee()[:45, :70]
  stream = codec.compress(image)
  y = codec.analyze(image)
  # The same payload as the entropy coder's for the same latent.
  latent_stream = codec.entropy_coder.compress(y[0])
  assert stream[bitstream.HEADER_BYTES - 8:-4] == latent_stream[bitstream.HEADER_BYTES - 8:-4]
  np.testing.assert_array_equal(codec.entropy_coder.decompress(latent_stream), y[0])
  # Each refuses the other's stream, and the codec says what the stream is.
  with pytest.raises(BitstreamError, match="holds a latent"):
    codec.decompress(latent_stream)
  with pytest.raises(BitstreamError, match="another model"):
    codec.entropy_coder.decompress(stream)


def test_load_shipped_entropy_coder():
  coder = EntropyCoder.load("m2t")
  codec = Codec.load("m2t")
  assert coder.latent_channels == codec.config.latent_channels
  y = codec.analyze(data.astronaut()[:64, :96])[0]
  np.testing.assert_array_equal(coder.decompress(coder.compress(y)), y)
