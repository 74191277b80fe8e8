"""The fixed split of an image folder into train / val / test, by file name.

A file's split depends on its name alone (the last component of its path, not the
folder it lies in, nor the order in which a file system lists it), so every
machine, host and tool puts a file in the same split:

    bucket(name) = int(sha256(name as UTF-8).hexdigest(), 16) mod 1000
    'val'   if bucket <  VAL_END   (170: 17% of the names)
    'test'  if bucket <  TEST_END  (340: the next 17%)
    'train' otherwise              (66%)

The validation split decides every choice (lambdas, steps, fine-tunes, encoder
settings); the test split is measured once per shipped model and decides
nothing. Adding files to a folder never moves another file to a different split.
Names are compared exactly: renaming a file (even its case or extension) may move
it. ``list_split`` applies the rule to a folder (``images.list_images``:
PNG/JPEG, recursive, sorted); ``'all'`` keeps every file.
"""

import hashlib
import os

SPLITS = ("train", "val", "test")
CHOICES = (*SPLITS, "all")  # what --split and config.data.split accept
BUCKETS = 1000
VAL_END = 170  # buckets [0, VAL_END) are 'val'
TEST_END = 340  # buckets [VAL_END, TEST_END) are 'test', the rest 'train'


def bucket(name: str) -> int:
  """The name's bucket in 0..999: sha256 of its UTF-8 bytes, as an integer, mod 1000.

  ``name`` is taken as given; ``split_of`` first reduces a path to its name.
  """
  return int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16) % BUCKETS


def split_of(name: str) -> str:
  """'train', 'val' or 'test': the split of a file name (a path counts by its
  last component, so 'a/x.png' and 'b/x.png' share a split)."""
  b = bucket(os.path.basename(name))
  if b < VAL_END:
    return "val"
  return "test" if b < TEST_END else "train"


def check_split(split: str) -> str:
  """``split`` itself if it is one of ``CHOICES``, else ValueError."""
  if split not in CHOICES:
    raise ValueError(f"split={split!r}: expected one of {CHOICES}.")
  return split


def select(paths, split: str) -> list[str]:
  """The paths (in their order) whose file name is in ``split`` ('all': every one)."""
  check_split(split)
  return [p for p in paths if split == "all" or split_of(p) == split]


def list_split(folder: str, split: str) -> list[str]:
  """Sorted paths of the PNG/JPEG files under ``folder`` (recursive) in ``split``.

  Raises:
    ValueError: ``split`` is not one of ``CHOICES``, or the folder holds no image
      file of that split.
    FileNotFoundError: no such folder.
  """
  from m2t_jax import images  # noqa: PLC0415 - Pillow, not needed by split_of

  check_split(split)
  every = images.list_images(folder)
  chosen = select(every, split)
  if not chosen:
    raise ValueError(f"None of the {len(every)} images under {folder!r} is in the "
                     f"{split!r} split (the split of a file is fixed by its name: "
                     "m2t_jax.evaluation.splits).")
  return chosen
