"""Input pipelines (grain): image folders or TFDS datasets -> batches of crops.

Two sources give the same thing, a random-access sequence of RGB uint8 images
(H, W, 3) of any size:

* ``folder``: every ``.png``, ``.jpg`` and ``.jpeg`` file (any case) under a
  directory, recursively, in sorted path order; with ``data.split`` (train_dir)
  or ``data.val_split`` (val_dir) set to 'train', 'val' or 'test', only the files
  of that split of the folder (``evaluation.splits``: fixed by each file's name).
  Unreadable files are skipped with one warning each and counted
  (``skipped_files`` in the training metrics); too many of them, more than
  ``data.max_unreadable_fraction`` of the files, or none readable, stop the run
  with a one-line ``TrainingDataError`` (``train.folder_source``).
* ``tfds``: an array_record TFDS dataset read with ``tfds.data_source`` (random
  access, no TensorFlow). A dataset prepared in another format (tfrecord) gets a
  ``ValueError`` that says how to convert it.

Files and TFDS examples become RGB uint8 through ``m2t_jax.images``, the reader
that the CLI and evaluation use too, so a model trains on the pixels that it
will later compress: EXIF orientation applied, 16-bit samples scaled by
round(x * 255 / 65535), greyscale replicated, palettes looked up, alpha dropped
(not composited). An unreadable TFDS example raises ``ImageFileError`` (a
``ValueError``) naming it.

Training (``train_dataset``): the images are split between hosts (host i of n
takes images i, i + n, ...: ``host_share``, shared with the frozen-latent
pipeline), shuffled
with a new permutation each epoch, cropped at a uniformly random position to
``crop_size`` x ``crop_size``, flipped left-right with probability 1/2, and
batched to ``batch_size / num_hosts`` crops per host. An image smaller than the
crop is first extended by mirror padding (``np.pad(mode='symmetric')``, bottom
and right, repeated as often as needed, so a 1x1 image works too). Mirroring,
not upscaling, because upscaling would blur the image and teach the model that
photos are smoother (cheaper) than they are; a mirrored border keeps the local
pixel statistics.

Every random choice is a function of (config.seed, host index, position in the
stream), so the stream is reproducible, and the iterator's state (one integer
per host) is saved with each checkpoint (``grain.checkpoint.CheckpointHandler``):
a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

import grain
import ml_collections
import numpy as np
from absl import flags

from m2t_jax import images
from m2t_jax.train.folder_source import DEFAULT_MAX_UNREADABLE_FRACTION, ImageFolderSource

SOURCES = ("folder", "tfds")  # the values of config.data.source


# --------------------------------------------------------------------------- #
# TFDS.
# --------------------------------------------------------------------------- #


def _array_record_help(name: str, data_dir: str | None) -> str:
  where = f", data_dir={data_dir!r}" if data_dir else ""
  return (
      "tfds.data_source needs the array_record file format (random access, no "
      "TensorFlow). Convert the prepared dataset with\n"
      "  tfds convert_format --dataset_dir=<dir of the dataset> "
      "--out_file_format=array_record\n"
      "or prepare it again in that format:\n"
      f"  tfds build {name} --file_format=array_record\n"
      f"  tfds.builder({name!r}{where}).download_and_prepare("
      "file_format='array_record')")


def tfds_source(name: str, split: str = "train", data_dir: str | None = None,
                image_key: str = "image") -> grain.MapDataset:
  """A prepared array_record TFDS dataset as a MapDataset of (H, W, 3) uint8.

  Args:
    name: TFDS name, optionally with config and version ('name/config:1.0.0').
    split: TFDS split spec, e.g. 'train' or 'train[:90%]'.
    data_dir: where the dataset is prepared (None: TFDS's default).
    image_key: the image feature of each example.

  Raises:
    ValueError: the dataset is not prepared, not in array_record format, or has
      no feature ``image_key``.
  """
  import tensorflow_datasets as tfds  # noqa: PLC0415 - slow import, only for tfds
  from tensorflow_datasets.core import file_adapters  # noqa: PLC0415

  data_dir = data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"TFDS dataset {name!r} not found (data_dir={data_dir!r}): "
                     f"{first_line}") from e
  if not builder.is_prepared():
    raise ValueError(
        f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}. Prepare it "
        f"first (training never downloads):\n" + _array_record_help(name, data_dir))
  formats = builder.info.available_file_formats()
  if not formats & file_adapters.FileFormat.with_random_access():
    found = ", ".join(sorted(f.value for f in formats)) or "unknown"
    raise ValueError(f"TFDS dataset {name!r} in {builder.data_dir!r} is stored as "
                     f"{found}. " + _array_record_help(name, data_dir))
  features = builder.info.features
  if image_key not in features:
    raise ValueError(f"TFDS dataset {name!r} has no feature {image_key!r} (it has "
                     f"{sorted(features.keys())}); set data.tfds_image_key.")
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except NotImplementedError as e:  # TFDS's own "no random access" error
    raise ValueError(f"{e}\n" + _array_record_help(name, data_dir)) from e
  label = f"{name}[{split}]"
  return grain.MapDataset.source(source).map(
      lambda example: images.to_rgb_uint8(example[image_key], label))


# --------------------------------------------------------------------------- #
# Crops.
# --------------------------------------------------------------------------- #


def pad_to_size(image: np.ndarray, size: int) -> np.ndarray:
  """Mirror-pads (H, W, 3) at the bottom/right to at least size x size."""
  h, w, _ = image.shape
  ph, pw = max(size - h, 0), max(size - w, 0)
  if ph == 0 and pw == 0:
    return image
  return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="symmetric")


def random_crop_flip(image: np.ndarray, crop_size: int,
                     rng: np.random.Generator) -> np.ndarray:
  """A uniformly placed crop_size^2 crop, flipped left-right with probability 1/2."""
  image = pad_to_size(image, crop_size)
  h, w, _ = image.shape
  top = rng.integers(0, h - crop_size + 1)
  left = rng.integers(0, w - crop_size + 1)
  crop = image[top:top + crop_size, left:left + crop_size]
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  return np.ascontiguousarray(crop)


def center_crop(image: np.ndarray, crop_size: int) -> np.ndarray:
  """The central crop_size^2 crop (mirror-padded first when the image is smaller)."""
  image = pad_to_size(image, crop_size)
  h, w, _ = image.shape
  top, left = (h - crop_size) // 2, (w - crop_size) // 2
  return np.ascontiguousarray(image[top:top + crop_size, left:left + crop_size])


class RandomCropFlip(grain.transforms.RandomMap):
  """grain transform: (H, W, 3) uint8 -> (crop, crop, 3) uint8, see above."""

  def __init__(self, crop_size: int):
    self.crop_size = crop_size

  def random_map(self, element, rng: np.random.Generator):
    return random_crop_flip(element, self.crop_size, rng)


# --------------------------------------------------------------------------- #
# Pipelines.
# --------------------------------------------------------------------------- #


def image_source(config: ml_collections.ConfigDict, split: str = "train"):
  """The images of ``split`` ('train' or 'val'), or None for a 'val' split that
  the config does not set: an ``ImageFolderSource`` (folders; the files of
  data.split / data.val_split) or a MapDataset (TFDS), each indexable [i] ->
  (H, W, 3) uint8."""
  d = config.data
  if d.source not in SOURCES:
    raise ValueError(f"data.source={d.source!r}: expected one of {SOURCES}.")
  max_bad = d.get("max_unreadable_fraction", DEFAULT_MAX_UNREADABLE_FRACTION)
  if split == "val":
    if d.val_dir:
      return ImageFolderSource(d.val_dir, d.get("val_split", "all"), max_bad)
    if d.source == "tfds" and d.get("tfds_val_split"):
      return tfds_source(d.tfds_name, d.tfds_val_split, d.tfds_data_dir,
                         d.tfds_image_key)
    return None
  if d.source == "folder":
    return ImageFolderSource(d.train_dir, d.get("split", "all"), max_bad)
  return tfds_source(d.tfds_name, d.tfds_split, d.tfds_data_dir, d.tfds_image_key)


def skipped_files(source) -> int:
  """How many unreadable files ``source`` has skipped so far (0: not a folder)."""
  return getattr(source, "num_skipped", 0)


def shard_options(shard_index: int | None = None,
                  shard_count: int | None = None) -> grain.sharding.ShardOptions:
  """This host's shard: jax.process_index() of jax.process_count() by default."""
  if shard_index is None or shard_count is None:
    return grain.sharding.ShardByJaxProcess(drop_remainder=True)
  return grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=True)


def host_share(batch_size: int, num_images: int,
               shard: grain.sharding.ShardOptions) -> tuple[int, range]:
  """(crops per step on this host, indices of this host's images).

  Host i of n takes images i, i + n, ..., the same number on every host (the
  last num_images mod n are left out: drop_remainder, so every host's epoch has
  the same length and hosts never wait on each other at epoch boundaries), and
  batch_size / n crops per step.

  Raises:
    ValueError: batch_size is not a multiple of n, or fewer images than hosts.
  """
  count = shard.shard_count
  if batch_size % count:
    raise ValueError(f"batch_size={batch_size} cannot be split evenly over "
                     f"{count} hosts.")
  per_host = num_images // count
  if per_host == 0:
    raise ValueError(f"{num_images} training images cannot be shared by "
                     f"{count} hosts: each host needs at least one.")
  return batch_size // count, range(shard.shard_index, per_host * count, count)


def train_dataset(config: ml_collections.ConfigDict,
                  shard: grain.sharding.ShardOptions | None = None,
                  source: grain.MapDataset | None = None) -> grain.IterDataset:
  """The endless training stream of this host.

  Args:
    config: uses data.*, crop_size, batch_size (global: the host gets
      batch_size / shard_count) and seed.
    shard: this host's shard (default: from jax.process_index/count).
    source: images to use instead of ``image_source(config)``: a MapDataset or
      a sequence, [i] -> (H, W, 3) uint8.

  Returns:
    An IterDataset whose elements are (batch_size / shard_count, crop_size,
    crop_size, 3) uint8 arrays. ``iter(...)`` gives a checkpointable iterator.
  """
  shard = shard or shard_options()
  ds = image_source(config, "train") if source is None else source
  if not isinstance(ds, grain.MapDataset):
    ds = grain.MapDataset.source(ds)
  host_batch, mine = host_share(config.batch_size, len(ds), shard)
  ds = ds[mine.start:mine.stop:mine.step]
  # Same shuffle seed on every host (they hold disjoint images); shuffle before
  # repeat gives a fresh permutation in every epoch.
  ds = ds.shuffle(seed=config.seed % 2**32).repeat()
  # Crop positions and flips: a separate stream per host, so that hosts do not
  # crop their (different) images at the same positions.
  crop_seed = int(np.random.SeedSequence([config.seed, shard.shard_index])
                  .generate_state(1)[0])
  ds = ds.random_map(RandomCropFlip(config.crop_size), seed=crop_seed)
  d = config.data
  # Batch after to_iter_dataset so that the prefetch buffer counts images, not
  # batches (a paper batch is 32 x 384^2 x 3 bytes).
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=max(int(d.num_threads), 1),
      prefetch_buffer_size=max(int(d.prefetch_buffer_size), 1)))
  it = it.batch(host_batch, drop_remainder=True)
  if d.num_workers > 0:
    # grain's workers read absl flags; outside an absl app (a notebook, pytest)
    # nothing has parsed them, and reading them would raise.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(d.num_workers)))
  return it


def eval_images(config: ml_collections.ConfigDict, source=None) -> np.ndarray | None:
  """Center crops of the validation images: (N, crop, crop, 3) uint8, or None.

  N = min(number of validation images, data.val_max_images); every host gets the
  same crops (evaluation is small and needs no cross-host reduction).
  """
  ds = image_source(config, "val") if source is None else source
  if ds is None:
    return None
  n = len(ds)
  if config.data.val_max_images > 0:
    n = min(n, int(config.data.val_max_images))
  return np.stack([center_crop(ds[i], config.crop_size) for i in range(n)])
