"""The model shipped in the package: loads, round-trips exactly, and still codes
the sample photos as it did when it was shipped (a regression guard)."""

import numpy as np
import pytest

from m2t_jax import Codec, models
from m2t_jax.app import demo
from m2t_jax.entropy import registry
from m2t_jax.evaluation import metrics


def test_a_default_model_ships():
  manifest = models.manifest()
  assert manifest["default"] in manifest["models"]
  entry = manifest["models"][manifest["default"]]
  assert entry["kind"] in registry.names()
  for key in ("lmbda", "training_steps", "data", "validation", "fingerprint", "samples"):
    assert key in entry
  # `m2t eval` over the default kind's shipped models is an RD curve: at least
  # three lambdas, rate and quality both rising with lambda.
  curve = sorted((e["lmbda"], e["validation"]["bpp"], e["validation"]["psnr"])
                 for e in manifest["models"].values() if e["kind"] == entry["kind"])
  assert len({lmbda for lmbda, _, _ in curve}) >= 3
  for (_, bpp0, psnr0), (_, bpp1, psnr1) in zip(curve[:-1], curve[1:], strict=True):
    assert bpp1 > bpp0 and psnr1 > psnr0, curve
  # The paper's two kinds ship too (the demo compares their decoding).
  assert models.names("m2t") and models.names("mt")


@pytest.mark.parametrize("model_name", models.names())
def test_shipped_model_round_trip_and_figures(model_name):
  entry = models.manifest()["models"][model_name]
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
  # Coding is deterministic on one platform: the manifest's figures (measured
  # with real bytes by experiments/ship_model.py) hold to within 0.5%.
  assert bpp == pytest.approx(ref["bpp"], rel=0.005)
  assert psnr == pytest.approx(ref["psnr-rgb"], rel=0.005)
  # Sample photos and held-out validation photos are the same class of image:
  # the sample's figures stay within a factor 2 of the validation means.
  assert 0.5 < bpp / entry["validation"]["bpp"] < 2.0
  assert abs(psnr - entry["validation"]["psnr"]) < 6.0


def test_shipped_names_resolve():
  manifest = models.manifest()
  default_kind = manifest["models"][manifest["default"]]["kind"]
  assert Codec.load(default_kind).fingerprint == Codec.load().fingerprint
  assert Codec.load("m2t").config.model == "m2t"
  with pytest.raises(FileNotFoundError, match="No shipped model named"):
    models.resolve("no-such-model")


def test_a_kind_resolves_to_its_default_or_first_model():
  manifest = models.manifest()
  default = manifest["default"]
  for name in models.names():
    assert models.resolve(name).endswith(manifest["models"][name]["folder"])
  for kind in models.kinds():
    assert kind in registry.names()
    names = models.names(kind)
    expected = default if default in names else names[0]
    assert models.resolve(kind) == models.resolve(expected)
  assert models.kinds()[0] == manifest["models"][default]["kind"]
  # A registered kind of which no model ships.
  kind = registry.Kind("no-model-kind", code=250, model=object, config=lambda size: None)
  registry.register(kind)
  try:
    with pytest.raises(FileNotFoundError, match="No shipped model of kind"):
      models.resolve("no-model-kind")
  finally:
    registry.unregister("no-model-kind")
