"""A folder of training images that trains on when some of its files are unreadable.

A corpus of thousands of files must not stop hours into a run on one broken
file, nor train for hours on a folder that is mostly broken. So
``ImageFolderSource``:

* lists the folder's PNG/JPEG files (``images.list_images``: recursive, sorted),
  keeps those of the requested split (``evaluation.splits``), and checks each
  one's header at once (``PIL.Image.open`` + ``verify``: a few reads per file,
  no pixel decoding; it finds non-images, empty files and truncated or
  corrupted PNGs). A file that fails is left out, with one warning naming it.
* decodes a file when it is asked for (``images.load_image``). A file that
  passed the header check but cannot be decoded (a truncated JPEG, for one) gets
  one warning naming it, is left out from then on, and its place in the stream
  is taken by the next readable file in path order, so batches and epochs keep
  their length and the stream stays a function of the seed.
* raises ``TrainingDataError`` (one line) when no readable file is left, or when
  more than ``max_unreadable_fraction`` of the listed files are unreadable (both
  checked at listing and at every new decoding failure).

``unreadable`` maps each skipped path to its reason (``num_skipped`` counts
them: the training metrics' ``skipped_files``). With grain worker processes
(``data.num_workers > 0``) each worker decodes with its own copy: a decoding
failure is then warned by the worker that met it and counted in that worker,
not in the training metrics, and a ``TrainingDataError`` raised in a worker
reaches the run as grain's "worker process was terminated" error, its message
in the worker's log above (the header check runs before the workers start, so
what it finds is counted, and stops the run, as without workers).
"""

from collections.abc import Sequence

from absl import logging
from PIL import Image

from m2t_jax import images
from m2t_jax.evaluation import splits

# config.data.max_unreadable_fraction. Half: a folder that is mostly unreadable is
# the wrong folder, a failed copy or a format Pillow cannot read, and a run on
# what is left would not be the run that was asked for; below that, a few broken
# files among good ones (a new user's folder of five with two broken ones too)
# train on.
DEFAULT_MAX_UNREADABLE_FRACTION = 0.5


class TrainingDataError(ValueError):
  """The training images cannot make a run: none readable, or too many broken.

  Its message is one line; ``python -m m2t_jax.train`` prints it without a
  traceback and exits with status 1.
  """


def header_problem(path: str) -> str | None:
  """None if ``path``'s header reads as an image, else why not (one line, naming
  the path). Decodes no pixels: a file that passes may still fail to decode."""
  try:
    with Image.open(path) as opened:
      opened.verify()
  except Exception as e:  # noqa: BLE001 - Pillow's many ways of saying "not an image"
    return _one_line(f"cannot read {path!r} as an image: {type(e).__name__}: {e}")
  return None


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


class ImageFolderSource(Sequence):
  """Random-access source over the readable images of a folder: [i] -> (H, W, 3) uint8.

  Args:
    directory: the folder (searched recursively for PNG/JPEG files).
    split: 'all' or a split of ``evaluation.splits`` ('train', 'val', 'test'):
      only the files of that split.
    max_unreadable_fraction: in [0, 1]; more unreadable files than this share
      of the listed ones is a ``TrainingDataError``.

  Raises:
    FileNotFoundError: no such folder.
    ValueError: no image file in it (of that split), or an impossible argument.
    TrainingDataError: see the module docstring.
  """

  def __init__(self, directory: str, split: str = "all",
               max_unreadable_fraction: float = DEFAULT_MAX_UNREADABLE_FRACTION):
    if not 0 <= max_unreadable_fraction <= 1:
      raise ValueError(f"max_unreadable_fraction={max_unreadable_fraction!r} must be "
                       "in [0, 1].")
    self.directory, self.split = directory, split
    self.max_unreadable_fraction = float(max_unreadable_fraction)
    listed = splits.list_split(directory, split)
    self.num_listed = len(listed)
    self.unreadable: dict[str, str] = {}  # path -> reason, in the order met
    self.paths = []
    for path in listed:
      problem = header_problem(path)
      if problem is None:
        self.paths.append(path)
      else:
        self._skip(path, problem, check=False)
    self._check()
    if self.unreadable:
      logging.warning("%d of %d image files under %r are unreadable and skipped "
                      "(named above); training on the other %d.", len(self.unreadable),
                      self.num_listed, directory, len(self.paths))

  @property
  def num_skipped(self) -> int:
    return len(self.unreadable)

  def _skip(self, path: str, reason: str, check: bool = True) -> None:
    # One warning per file, however often it is met; setdefault is atomic, so
    # grain's reader threads meeting the same file warn once between them.
    if self.unreadable.setdefault(path, reason) is reason:
      logging.warning("Skipping an unreadable image: %s", reason)
    if check:
      self._check()

  def _where(self) -> str:
    return f"{self.directory!r}" + ("" if self.split == "all" else
                                    f" (split {self.split!r})")

  def _none_readable(self) -> TrainingDataError:
    first = next(iter(self.unreadable.values()))
    return TrainingDataError(_one_line(
        f"No readable image under {self._where()}: all {self.num_listed} image files "
        f"are unreadable (first: {first})."))

  def _check(self) -> None:
    bad, listed, where = len(self.unreadable), self.num_listed, self._where()
    if bad >= listed:
      raise self._none_readable()
    if bad > self.max_unreadable_fraction * listed:
      raise TrainingDataError(_one_line(
          f"{bad} of the {listed} image files under {where} are unreadable (named in "
          f"the warnings above), more than data.max_unreadable_fraction="
          f"{self.max_unreadable_fraction:g} of them: fix or remove them, or raise "
          "that limit."))

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    n = len(self.paths)
    index = range(n)[index]  # IndexError outside -n..n-1, as a list gives
    for k in range(n):  # this file, else the next readable one
      path = self.paths[(index + k) % n]
      if path in self.unreadable:
        continue
      try:
        return images.load_image(path)
      except (images.ImageFileError, OSError) as e:  # OSError: gone since listing
        self._skip(path, _one_line(str(e)))
    raise self._none_readable()

  def __repr__(self) -> str:
    return (f"ImageFolderSource({self.directory!r}, split={self.split!r}, {len(self)} "
            f"images, {self.num_skipped} skipped)")
