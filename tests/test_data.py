"""Tests of m2t_jax/train/data.py: folder and TFDS sources, crops, sharding,
determinism and checkpointable iteration. The pixel conversions themselves
(m2t_jax/images.py, shared with the CLI) are tested in test_images.py."""

import io
import json
import os
import shutil

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from m2t_jax import configs, images
from m2t_jax.evaluation import splits
from m2t_jax.train import data
from m2t_jax.train.folder_source import TrainingDataError

CROP = 16


def _config(**data_fields):
  config = configs.get_config("m2t", "tiny")
  config.crop_size = CROP
  config.batch_size = 4
  for k, v in data_fields.items():
    config.data[k] = v
  return config


def _constant_images(n, size=(20, 24)):
  """Image i is constant, colour (i, 100 + i, 200 - i): a crop tells its source."""
  return [np.broadcast_to(np.array([i, 100 + i, 200 - i], np.uint8), (*size, 3)).copy()
          for i in range(n)]


def _source_index(crop):
  """Which _constant_images image a crop (H, W, 3) came from."""
  values = np.unique(crop.reshape(-1, 3), axis=0)
  assert len(values) == 1, "a crop mixes images"
  return int(values[0, 0])


# --------------------------------------------------------------------------- #
# Crops.
# --------------------------------------------------------------------------- #


def test_crops_of_small_images_are_mirror_padded():
  rng = np.random.default_rng(0)
  small = rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)
  padded = data.pad_to_size(small, 16)
  assert padded.shape == (16, 16, 3)
  np.testing.assert_array_equal(padded[:5, :3], small)
  np.testing.assert_array_equal(padded[5:10, :3], small[::-1])  # mirrored
  for _ in range(20):
    crop = data.random_crop_flip(small, 16, rng)
    assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
    assert set(map(tuple, crop.reshape(-1, 3))) <= set(map(tuple, small.reshape(-1, 3)))
  one_pixel = np.full((1, 1, 3), 7, np.uint8)
  assert (data.random_crop_flip(one_pixel, 16, rng) == 7).all()
  assert data.center_crop(one_pixel, 16).shape == (16, 16, 3)


def test_random_crops_cover_positions_and_flips():
  image = np.arange(40 * 40 * 3, dtype=np.uint32).reshape(40, 40, 3).astype(np.uint8)
  image = np.broadcast_to(np.arange(40, dtype=np.uint8)[None, :, None], (40, 40, 3))
  rng = np.random.default_rng(0)
  firsts = [data.random_crop_flip(image, 16, rng)[0, :, 0] for _ in range(200)]
  lefts = {int(f[0]) for f in firsts if f[1] > f[0]}
  flipped = [f for f in firsts if f[1] < f[0]]
  assert len(lefts) > 15  # many horizontal positions
  assert 60 < len(flipped) < 140  # about half flipped


def test_center_crop():
  image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
  np.testing.assert_array_equal(data.center_crop(image, 16), image[7:23, 12:28])


# --------------------------------------------------------------------------- #
# Folder source.
# --------------------------------------------------------------------------- #


@pytest.fixture
def mixed_folder(tmp_path):
  """Greyscale, RGBA, palette, 16-bit, tiny and JPEG images, some nested."""
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  (tmp_path / "nested" / "deeper").mkdir(parents=True)
  Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
  Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA").save(tmp_path / "rgba.png")
  Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(
      tmp_path / "nested" / "palette.png")
  Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(tmp_path / "grey16.png")
  Image.fromarray(rgb[:5, :3]).save(tmp_path / "nested" / "deeper" / "tiny.PNG")
  Image.fromarray(rgb[:1, :1]).save(tmp_path / "one_pixel.png")
  Image.fromarray(rgb).save(tmp_path / "nested" / "photo.JPG", quality=90)
  Image.fromarray(rgb).save(tmp_path / "photo.jpeg", quality=90)
  (tmp_path / "notes.txt").write_text("not an image")
  return tmp_path


def test_folder_source_lists_and_decodes_everything(mixed_folder):
  source = data.ImageFolderSource(str(mixed_folder))
  names = [os.path.relpath(p, mixed_folder) for p in source.paths]
  assert names == ["grey.png", "grey16.png", os.path.join("nested", "deeper", "tiny.PNG"),
                   os.path.join("nested", "palette.png"), os.path.join("nested", "photo.JPG"),
                   "one_pixel.png", "photo.jpeg", "rgba.png"]
  for i in range(len(source)):
    image = source[i]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    # Training sees exactly what the CLI and evaluation read.
    np.testing.assert_array_equal(image, images.read_rgb(source.paths[i])[0])
  grey = source[0]
  assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_folder_training_batches(mixed_folder):
  config = _config(train_dir=str(mixed_folder))
  iterator = iter(data.train_dataset(config))
  for _ in range(6):  # three epochs of the eight images
    batch = next(iterator)
    assert batch.shape == (4, CROP, CROP, 3) and batch.dtype == np.uint8


def test_empty_or_missing_folder_gives_a_clear_error(tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
  with pytest.raises(ValueError, match="No images .* found under"):
    data.train_dataset(_config(train_dir=str(tmp_path / "empty")))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.train_dataset(_config(train_dir=str(tmp_path / "missing")))


def _photo_folder(folder, names=("astronaut", "coffee", "chelsea")):
  """scikit-image photos as PNG files in ``folder``, cropped to 96 x 128."""
  import skimage.data  # noqa: PLC0415
  folder.mkdir(exist_ok=True)
  for name in names:
    Image.fromarray(getattr(skimage.data, name)()[:96, :128]).save(folder / f"{name}.png")
  return folder


def _truncated(path, cut=0.5):
  """Keeps the first ``cut`` of ``path``'s bytes."""
  content = path.read_bytes()
  path.write_bytes(content[:int(len(content) * cut)])


def test_unreadable_files_are_skipped_once_and_counted(tmp_path, caplog):
  folder = _photo_folder(tmp_path / "photos")
  good = sorted(str(p) for p in folder.iterdir())
  photo = Image.open(good[0])
  photo.save(folder / "trunc.png")
  _truncated(folder / "trunc.png")  # found by the header check (PNG chunks)
  (folder / "notes.png").write_text("a text file named .png")
  photo.save(folder / "cut.jpg", quality=90)
  _truncated(folder / "cut.jpg")  # a JPEG's header passes: found when decoded
  with caplog.at_level("WARNING"):
    source = data.ImageFolderSource(str(folder))
    assert source.num_listed == 6 and len(source) == 4 and source.num_skipped == 2
    assert sorted(os.path.basename(p) for p in source.unreadable) == ["notes.png",
                                                                       "trunc.png"]
    decoded = [source[i] for i in range(len(source)) for _ in range(3)]  # 3 epochs
  names = [os.path.basename(p) for p in source.paths]
  assert names == ["astronaut.png", "chelsea.png", "coffee.png", "cut.jpg"]
  assert source.num_skipped == 3 and str(folder / "cut.jpg") in source.unreadable
  # cut.jpg's place goes to the next readable file (wrapping to the first).
  np.testing.assert_array_equal(decoded[9], np.asarray(Image.open(good[0])))
  np.testing.assert_array_equal(decoded[3], np.asarray(Image.open(good[1])))
  warnings = [r.getMessage() for r in caplog.records if "Skipping" in r.getMessage()]
  for name in ("trunc.png", "notes.png", "cut.jpg"):  # once each, though met 3 times
    assert sum(name in w for w in warnings) == 1, warnings
  assert len(warnings) == 3
  # The training stream goes on through them.
  config = _config(train_dir=str(folder))
  iterator = iter(data.train_dataset(config))
  assert all(next(iterator).shape == (4, CROP, CROP, 3) for _ in range(3))
  assert data.skipped_files(source) == 3 and data.skipped_files([np.zeros(1)]) == 0


def test_too_many_or_only_unreadable_files_are_one_line_errors(tmp_path):
  folder = _photo_folder(tmp_path / "photos", ("astronaut",))
  (folder / "notes.png").write_text("not an image")
  # One of two unreadable: above a limit of 0.4, at the default 0.5.
  with pytest.raises(TrainingDataError) as e:
    data.train_dataset(_config(train_dir=str(folder), max_unreadable_fraction=0.4))
  message = str(e.value)
  assert "1 of the 2 image files under" in message and "max_unreadable_fraction=0.4" \
      in message and "\n" not in message
  assert len(data.ImageFolderSource(str(folder))) == 1
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "a.png").write_bytes(b"")
  (bad / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  with pytest.raises(TrainingDataError) as e:
    data.ImageFolderSource(str(bad), max_unreadable_fraction=1.0)
  message = str(e.value)
  assert message.startswith("No readable image under") and "all 2 image files" in message
  assert "a.png" in message and "\n" not in message
  # A file that breaks after the listing (here: truncated JPEGs, which pass the
  # header check) counts too, when it is decoded.
  cut = _photo_folder(tmp_path / "cut", ("astronaut", "coffee"))
  for p in cut.iterdir():
    Image.open(p).save(p.with_suffix(".jpg"), quality=90)
    p.unlink()
  source = data.ImageFolderSource(str(cut), max_unreadable_fraction=1.0)
  for p in cut.iterdir():
    _truncated(p)
  with pytest.raises(TrainingDataError, match="No readable image .* all 2"):
    source[0]
  with pytest.raises(ValueError, match="max_unreadable_fraction"):
    data.ImageFolderSource(str(cut), max_unreadable_fraction=1.5)


def test_folder_split_keeps_only_that_split(tmp_path):
  pixel = np.zeros((4, 4, 3), np.uint8)
  for i in range(30):
    Image.fromarray(pixel + i).save(tmp_path / f"{i:03d}.png")
  sizes = {}
  for split in splits.CHOICES:
    source = data.image_source(_config(train_dir=str(tmp_path), split=split))
    sizes[split] = len(source)
    assert all(split == "all" or splits.split_of(p) == split for p in source.paths)
  assert sizes["all"] == 30 == sizes["train"] + sizes["val"] + sizes["test"]
  val = data.image_source(_config(val_dir=str(tmp_path), val_split="val"), "val")
  assert len(val) == sizes["val"]


def test_eval_images_are_center_crops(mixed_folder):
  config = _config(val_dir=str(mixed_folder), val_max_images=5)
  images = data.eval_images(config)
  assert images.shape == (5, CROP, CROP, 3) and images.dtype == np.uint8
  assert data.eval_images(_config()) is None  # no validation set configured


# --------------------------------------------------------------------------- #
# Determinism, checkpointing, sharding.
# --------------------------------------------------------------------------- #


def _stream(config, n, shard=None, state=None):
  source = grain.MapDataset.source(_constant_images(10))
  iterator = iter(data.train_dataset(config, shard=shard, source=source))
  if state is not None:
    iterator.set_state(state)
  return [next(iterator) for _ in range(n)], iterator


def test_stream_is_seeded_and_resumable():
  config = _config()
  batches, _ = _stream(config, 8)
  again, _ = _stream(config, 8)
  for a, b in zip(batches, again, strict=True):
    np.testing.assert_array_equal(a, b)
  _, iterator = _stream(config, 3)
  state = iterator.get_state()
  json.dumps(state)  # what the checkpoint stores
  resumed, _ = _stream(config, 5, state=state)
  for a, b in zip(batches[3:], resumed, strict=True):
    np.testing.assert_array_equal(a, b)
  config.seed = 1
  other, _ = _stream(config, 8)
  assert any(not np.array_equal(a, b) for a, b in zip(batches, other, strict=True))


def test_epochs_visit_every_image_once_in_a_new_order():
  config = _config()
  config.batch_size = 5
  batches, _ = _stream(config, 4)  # 2 epochs of 10 images
  order = [_source_index(crop) for batch in batches for crop in batch]
  assert sorted(order[:10]) == sorted(order[10:]) == list(range(10))
  assert order[:10] != order[10:]


def test_host_share():
  shard = data.shard_options(1, 3)
  assert data.host_share(6, 11, shard) == (2, range(1, 9, 3))  # 9, 10 left out
  with pytest.raises(ValueError, match="cannot be split evenly over 3 hosts"):
    data.host_share(4, 11, shard)
  with pytest.raises(ValueError, match="2 training images cannot be shared by 3 hosts"):
    data.host_share(3, 2, shard)


def test_hosts_read_disjoint_shards():
  config = _config()
  seen = []
  for index in range(2):
    shard = data.shard_options(index, 2)
    batches, _ = _stream(config, 5, shard=shard)  # 2 crops per host and step
    assert all(b.shape == (2, CROP, CROP, 3) for b in batches)
    seen.append({_source_index(crop) for batch in batches for crop in batch})
  assert seen[0] == {0, 2, 4, 6, 8} and seen[1] == {1, 3, 5, 7, 9}
  with pytest.raises(ValueError, match="cannot be split evenly over 3 hosts"):
    _stream(config, 1, shard=data.shard_options(0, 3))


def test_grain_worker_processes():
  config = _config(num_workers=1)
  config.data.train_dir = "unused"
  workers, _ = _stream(config, 3)
  config.data.num_workers = 0
  in_process, _ = _stream(config, 3)
  for a, b in zip(workers, in_process, strict=True):
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- #
# TFDS (a real builder, array_record, no TensorFlow).
# --------------------------------------------------------------------------- #


class M2tTestImages(tfds.core.GeneratorBasedBuilder):
  """Six constant-colour images of different sizes, two of them greyscale."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "index": tfds.features.Scalar(np.int64)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(range(6)),
            "validation": self._generate_examples(range(6, 8))}

  def _generate_examples(self, indices):
    images = _constant_images(8, size=(9, 30))  # smaller than a crop in height
    for i in indices:
      # PNG bytes: tfds encodes arrays with TensorFlow, but takes encoded files.
      buffer = io.BytesIO()
      Image.fromarray(images[i]).save(buffer, format="PNG")
      yield i, {"image": buffer.getvalue(), "index": i}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = M2tTestImages(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(file_format="array_record")
  return data_dir


def test_tfds_source_reads_array_record(tfds_dir):
  source = data.tfds_source("m2t_test_images", "train", tfds_dir)
  raw = tfds.data_source("m2t_test_images", split="train", data_dir=tfds_dir)
  assert len(source) == 6
  for i in range(6):
    image = source[i]
    assert image.shape == (9, 30, 3) and image.dtype == np.uint8
    assert _source_index(image) == raw[i]["index"]  # TFDS stores them shuffled
  assert sorted(_source_index(source[i]) for i in range(6)) == list(range(6))
  config = _config(source="tfds", tfds_name="m2t_test_images", tfds_data_dir=tfds_dir,
                   tfds_val_split="validation")
  config.batch_size = 3
  iterator = iter(data.train_dataset(config))
  batches = [next(iterator) for _ in range(4)]
  for batch in batches:
    assert batch.shape == (3, CROP, CROP, 3) and batch.dtype == np.uint8
  order = [_source_index(crop) for batch in batches for crop in batch]
  assert sorted(order[:6]) == sorted(order[6:]) == list(range(6))
  val = data.eval_images(config)
  assert val.shape == (2, CROP, CROP, 3)
  assert sorted(_source_index(v) for v in val) == [6, 7]


def test_tfds_errors_say_what_to_do(tfds_dir, tmp_path):
  with pytest.raises(ValueError, match="no feature 'picture'"):
    data.tfds_source("m2t_test_images", "train", tfds_dir, image_key="picture")
  with pytest.raises(ValueError, match="is not prepared"):
    data.tfds_source("m2t_test_images", "train", str(tmp_path / "elsewhere"))
  # The same dataset, declared as tfrecord (TFDS cannot write tfrecord without
  # TensorFlow): the error explains the conversion.
  tfrecord_dir = tmp_path / "tfrecord"
  shutil.copytree(tfds_dir, tfrecord_dir)
  info_path = tfrecord_dir / "m2t_test_images" / "1.0.0" / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError) as e:
    data.tfds_source("m2t_test_images", "train", str(tfrecord_dir))
  text = str(e.value)
  assert "stored as tfrecord" in text
  assert "tfds convert_format" in text and "--out_file_format=array_record" in text
  assert "download_and_prepare(file_format='array_record')" in text
