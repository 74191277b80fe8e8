"""Training one part on a frozen autoencoder's latents (``train_part``,
``m2t_jax/train/frozen.py``): only that part changes, bit for bit; it learns; two
kinds trained on the same autoencoder code the same latent; runs resume exactly.

The runs are in-process (one CPU device) on the tiny configs and scikit-image's
photos; a random tiny M2T saved to disk is the frozen source.
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import skimage.data
from PIL import Image

from m2t_jax import Codec, configs, model as model_lib, models, saved_model, train
from m2t_jax.coding.entropy_coder import EntropyCoder
from m2t_jax.train import frozen
from conftest import load_experiment

PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  folder = tmp_path_factory.mktemp("photos")
  for name in PHOTOS:
    Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
  return str(folder)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A random tiny M2T model folder (the frozen autoencoder) and its params."""
  config = configs.get_config("m2t", "tiny")
  params = jax.device_get(model_lib.init_params(config, seed=3))
  path = str(tmp_path_factory.mktemp("source") / "model")
  saved_model.save_params(path, config, params)
  return path, params


def _config(kind, part, source_path, photos, steps, **fields):
  config = configs.get_config(kind, "tiny")
  config.train_part = part
  config.init_from = source_path
  config.data.train_dir = photos
  config.crop_size = 64  # 4 x 4 latent cells: one tiny patch
  config.batch_size = 4
  config.num_steps = steps
  config.warmup_steps = 0
  config.learning_rate = 3e-3
  config.lmbda_warmup_factor = 1.0
  config.checkpoint_every = steps
  config.log_every = steps
  config.eval_every = 0
  for key, value in fields.items():
    config[key] = value
  return config


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _same(a, b) -> bool:
  a, b = _leaves(a), _leaves(b)
  return a.keys() == b.keys() and all(
      a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def _latents(params, config):
  """The source autoencoder's y_hat of each photo, as EntropyCoder input."""
  codec = Codec(config, params)
  return [codec.analyze(getattr(skimage.data, n)()) for n in PHOTOS]


@pytest.fixture(scope="module")
def entropy_run(source, photos, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("entropy_run"))
  # lmbda: not the source's; the run must take the source's (adopt_source_lmbda).
  config = _config("m2t", "entropy", source[0], photos, 50, lmbda=0.3)
  result = train.train_and_evaluate(config, workdir)
  _, params = saved_model.load_params(os.path.join(workdir, "model"))
  return config, workdir, params, result


def test_entropy_part_changes_only_the_entropy_model_and_lowers_its_bits(source,
                                                                        entropy_run):
  config, _, trained, _ = entropy_run
  _, initial = source
  for name in ("analysis", "synthesis"):
    assert _same(trained[name], initial[name]), name
  assert not _same(trained["entropy_model"], initial["entropy_model"])
  # The exported model carries its autoencoder's lambda, not the run's field.
  with open(os.path.join(source[0], "config.json")) as f:
    source_lmbda = json.load(f)["lmbda"]
  with open(os.path.join(entropy_run[1], "model", "config.json")) as f:
    assert json.load(f)["lmbda"] == source_lmbda != 0.3
  # Bits of the real coding schedule on the full photos' latents, before and after
  # (EntropyCoder, not the training loss).
  latents = _latents(initial, config)
  before = sum(EntropyCoder(config, initial["entropy_model"]).estimate_bits(y)
               for y in latents)
  after = sum(EntropyCoder(config, trained["entropy_model"]).estimate_bits(y)
              for y in latents)
  assert after < 0.8 * before, (before, after)


def test_two_kinds_on_the_same_latents_decode_to_the_same_image(source, photos,
                                                                entropy_run,
                                                                tmp_path):
  _, m2t_dir, _, _ = entropy_run
  config = _config("mt", "entropy", source[0], photos, 4)
  train.train_and_evaluate(config, str(tmp_path))
  image = skimage.data.coffee()[:200, :300]
  m2t = Codec.load(os.path.join(m2t_dir, "model"))
  mt = Codec.load(str(tmp_path / "model"))
  data_m2t, data_mt = m2t.compress(image), mt.compress(image)
  assert data_m2t != data_mt  # two entropy models ...
  assert np.array_equal(m2t.decompress(data_m2t), mt.decompress(data_mt))  # ... one y_hat


def test_decoder_part_changes_only_the_decoder_and_lowers_its_mse(source, photos,
                                                                  tmp_path):
  _, initial = source
  config = _config("m2t", "decoder", source[0], photos, 30, decoder_margin=1)
  train.train_and_evaluate(config, str(tmp_path))
  _, trained = saved_model.load_params(str(tmp_path / "model"))
  for name in ("analysis", "entropy_model"):
    assert _same(trained[name], initial[name]), name
  image = skimage.data.chelsea()
  mse = lambda params: np.mean(np.square(
      Codec(config, params).decompress(Codec(config, params).compress(image))
      .astype(float) - image))
  assert mse(trained) < 0.5 * mse(initial)


def test_scored_mask_skips_the_margin_inside_the_image_only():
  # A 6-cell window with a 2-cell margin, at cell (3, 3) of a 20 x 20-cell
  # latent: every side lies inside the image, so only cells 2..3 are scored.
  mask = frozen.scored_mask(3, 3, 6, 20, 20, margin=2)
  assert mask.shape == (96, 96) and mask.dtype == np.uint8
  expected = np.zeros((96, 96), np.uint8)
  expected[32:64, 32:64] = 1
  np.testing.assert_array_equal(mask, expected)
  # At the top-left corner: the image's own edges are scored, the far sides not.
  expected = np.zeros((96, 96), np.uint8)
  expected[0:64, 0:64] = 1
  np.testing.assert_array_equal(frozen.scored_mask(0, 0, 6, 20, 20, 2), expected)
  # At the bottom-right corner (cells 14..19 of 20): near sides skipped, far scored.
  expected = np.zeros((96, 96), np.uint8)
  expected[32:96, 32:96] = 1
  np.testing.assert_array_equal(frozen.scored_mask(14, 14, 6, 20, 20, 2), expected)
  # A latent of 3 x 4 cells, padded to the window: only its real cells count.
  expected = np.zeros((96, 96), np.uint8)
  expected[0:48, 0:64] = 1
  np.testing.assert_array_equal(frozen.scored_mask(0, 0, 6, 3, 4, 2), expected)
  # No margin: the whole real window.
  assert frozen.scored_mask(3, 3, 6, 20, 20, 0).all()


def test_decoder_crops_score_what_full_image_decoding_gives():
  """The reason for the margin: on the scored pixels of a training window, D of
  the shipped default run on the window alone gives the full-image decode; on
  all of a window cut inside the image it does not (zeros beyond its sides)."""
  codec = Codec.load(models.manifest()["default"])
  config = codec.config
  model = model_lib.build_model(config)
  decode = jax.jit(lambda y: model.apply({"params": codec.params}, y,
                                         method=model_lib.CompressionModel.decode))
  image = skimage.data.astronaut()[:320, 64:384]
  y_full = frozen.compute_latents(config, codec.params, [image])[0]  # not the mirror
  full = np.asarray(decode(y_full[None].astype(np.float32)))[0]
  crop = frozen.LatentCrop(2, margin=4)  # 2 scored cells in a 10-cell window
  inside = 0
  for seed in range(8):
    pixels, y, scored = crop.random_map((image, y_full), np.random.default_rng(seed))
    assert y.shape == (10, 10, y_full.shape[-1]) and pixels.shape == (160, 160, 3)
    top, left = _window_position(image, pixels)
    np.testing.assert_array_equal(y, y_full[top:top + 10, left:left + 10])
    alone = np.asarray(decode(y[None].astype(np.float32)))[0]
    same = full[16 * top:16 * top + 160, 16 * left:16 * left + 160]
    on = scored.astype(bool)
    np.testing.assert_allclose(alone[on], same[on], atol=0.01)  # on 0..255
    if 0 < top < 10 and 0 < left < 10:  # a window inside the image on every side
      inside += 1
      assert np.abs(alone - same).max() > 10
  assert inside > 0


def test_crop_border_experiment_finds_the_excess_and_its_margin():
  script = load_experiment("decoder_crop_borders")
  codec = Codec.load(models.manifest()["default"])
  # 16 x 16 cells: the one 8-cell window 4 cells from every edge starts at cell 4.
  result = script.measure(codec, skimage.data.astronaut()[:256, :256], 8, (0, 3))
  assert result["windows"] == 1
  assert result["by_margin"]["0"]["excess"] > 0.05  # the crop's zero borders cost
  assert abs(result["by_margin"]["3"]["excess"]) < 0.01  # the interior does not


def _window_position(image, pixels):
  """(top, left) in cells of the 16-aligned window ``pixels`` of ``image``."""
  h, w = pixels.shape[:2]
  found = [(t, c) for t in range(0, image.shape[0] - h + 1, 16)
           for c in range(0, image.shape[1] - w + 1, 16)
           if np.array_equal(image[t:t + h, c:c + w], pixels)]
  assert len(found) == 1
  return found[0][0] // 16, found[0][1] // 16


def test_resumed_run_equals_the_uninterrupted_one(source, photos, tmp_path):
  config = _config("m2t", "entropy", source[0], photos, 8, checkpoint_every=4)
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(config, workdir)
  assert any(f.startswith("frozen_latents_") for f in os.listdir(workdir))
  # Forget the last checkpoint and the export: the rerun resumes from step 4
  # (latents from the workdir's cache, the stream from the checkpoint).
  shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
  shutil.rmtree(os.path.join(workdir, "model"))
  second = train.train_and_evaluate(config, workdir)
  assert second["step"] == 8
  assert _same(first["state"].params, second["state"].params)


def test_impossible_part_settings_are_refused(source, photos):
  config = _config("m2t", "entropy", "", photos, 5)
  with pytest.raises(ValueError, match="init_from"):
    train.validate_training_config(config)
  config = _config("m2t", "encoder", source[0], photos, 5)
  with pytest.raises(ValueError, match="train_part='encoder'"):
    train.validate_training_config(config)
  for margin in (-1,):
    config = _config("m2t", "decoder", source[0], photos, 5, decoder_margin=margin)
    with pytest.raises(ValueError, match="decoder_margin"):
      train.validate_training_config(config)
  config = _config("m2t", "decoder", source[0], photos, 5)
  with pytest.raises(ValueError, match="entropy model"):
    frozen.check_warm_start(config, ["['entropy_model']['head']['kernel']"])
  frozen.check_warm_start(config, ["['synthesis']['conv_0']['kernel']"])  # trained


def test_frozen_scales_add_downscaled_photos():
  coffee = skimage.data.coffee()  # 400 x 600
  views = frozen.scaled_images([coffee], (1.0, 0.5, 0.02))
  # 0.02 would leave 8 x 12 pixels: skipped; the others edge-padded to 16s.
  assert [v.shape for v in views] == [(400, 608, 3), (208, 304, 3)]
  np.testing.assert_array_equal(views[0][:, :600], coffee)
  small = views[1][:200, :300].astype(np.float64)
  # A 2x downscale keeps each 2x2 block's mean (Lanczos, not a crop or a stride).
  blocks = coffee.reshape(200, 2, 300, 2, 3).mean(axis=(1, 3))
  assert abs(small.mean() - coffee.mean()) < 1.0
  assert np.abs(small - blocks).mean() < 4.0
  assert np.abs(small - coffee[::2, ::2]).mean() > np.abs(small - blocks).mean()


def test_frozen_scales_give_their_own_latents_and_cache(source, photos, tmp_path):
  workdir = str(tmp_path)
  for scales in ((1.0, 0.5), (1.0, 0.75)):
    config = _config("m2t", "entropy", source[0], photos, 5, frozen_scales=scales)
    batch = next(iter(frozen.latent_dataset(config, source[1], workdir)))
    assert batch.shape == (4, 4, 4, config.latent_channels)
  caches = sorted(f for f in os.listdir(workdir) if f.startswith("frozen_latents_"))
  assert len(caches) == 2  # same count of images, different pixels: two caches
  with np.load(os.path.join(workdir, caches[0])) as a, \
       np.load(os.path.join(workdir, caches[1])) as b:
    shapes = sorted([tuple(a[k].shape[:2]) for k in a.files] +
                    [tuple(b[k].shape[:2]) for k in b.files])
  # astronaut 512 x 512, coffee 400 x 600, chelsea 300 x 451; each with its mirror,
  # as is (in both caches) and at 0.5 / 0.75 (ceil(side * f / 16) cells).
  expected = []
  for h, w in ((512, 512), (400, 600), (300, 451)):
    expected += 4 * [(-(-h // 16), -(-w // 16))]
    for f in (0.5, 0.75):
      expected += 2 * [(-(-round(h * f) // 16), -(-round(w * f) // 16))]
  assert shapes == sorted(expected)


@pytest.mark.parametrize("scales", [(), (0.0,), (1.5,), (1.0, 1.0), (True,), ("1",)])
def test_impossible_frozen_scales_are_refused(source, photos, scales):
  config = _config("m2t", "entropy", source[0], photos, 5, frozen_scales=scales)
  with pytest.raises(ValueError, match="frozen_scales"):
    train.validate_training_config(config)
