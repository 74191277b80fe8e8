"""The model shipped in the package: loads, round-trips exactly, and still codes
the sample photos as it did when it was shipped (a regression guard)."""

import numpy as np
import pytest

from m2t_jax import Codec, demo, metrics, shipped


def test_a_default_model_ships():
  manifest = shipped.manifest()
  assert manifest["default"] in manifest["models"]
  entry = manifest["models"][manifest["default"]]
  assert entry["kind"] == "m2t"
  for key in ("lmbda", "training_steps", "data", "validation", "fingerprint", "samples"):
    assert key in entry


@pytest.mark.parametrize("model_name", shipped.names())
def test_shipped_model_round_trip_and_figures(model_name):
  entry = shipped.manifest()["models"][model_name]
  codec = Codec.load(model_name)
  assert codec.config.model == entry["kind"]
  assert codec.fingerprint.hex() == entry["fingerprint"]
  name, image = demo.sample_images(["coffee"])[0]
  data = codec.compress(image)
  decoded = codec.decompress(data)
  estimate = codec.estimate(image)
  np.testing.assert_array_equal(decoded, estimate["reconstruction"])
  bpp = 8 * len(data) / (image.shape[0] * image.shape[1])
  psnr = metrics.psnr_rgb(image, decoded)
  ref = entry["samples"][name]
  assert bpp == pytest.approx(ref["bpp"], rel=0.10)
  assert psnr == pytest.approx(ref["psnr-rgb"], rel=0.10)
  # Sample photos and held-out validation photos are the same class of image:
  # the sample's figures stay within a factor 2 of the validation means.
  assert 0.5 < bpp / entry["validation"]["bpp"] < 2.0
  assert abs(psnr - entry["validation"]["psnr"]) < 6.0


def test_shipped_names_resolve():
  assert Codec.load("m2t").fingerprint == Codec.load().fingerprint
  with pytest.raises(FileNotFoundError, match="No shipped model named"):
    shipped.resolve("no-such-model")
