"""The fixed train / val / test split of an image folder (m2t_jax/evaluation/splits.py)."""

import hashlib
import os
import random

import numpy as np
import pytest
from PIL import Image

from m2t_jax.evaluation import splits

def _names(n):
  return [f"{i:04d}.jpg" for i in range(n)]


def test_rule_on_known_names():
  # The rule written out, independently of the module: sha256 of the name as an
  # integer, mod 1000; [0, 170) val, [170, 340) test, the rest train.
  for name in ("0001.jpg", "photo.png", "ünïcode.jpeg", "a b.PNG"):
    b = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest(), "big") % 1000
    expected = "val" if b < 170 else "test" if b < 340 else "train"
    assert splits.split_of(name) == expected
  # Pinned: these names' buckets (worked out once with hashlib, outside the
  # module) must never move, or every published split figure would change.
  pinned = {"0001.jpg": (873, "train"), "0003.jpg": (88, "val"), "0006.jpg": (99, "val"),
            "0008.jpg": (309, "test"), "001.png": (870, "train")}
  for name, (b, split) in pinned.items():
    assert (splits.bucket(name), splits.split_of(name)) == (b, split)


def test_split_depends_on_the_name_alone():
  names = _names(500)
  first = {n: splits.split_of(n) for n in names}
  shuffled = names[:]
  random.Random(0).shuffle(shuffled)
  assert {n: splits.split_of(n) for n in shuffled} == first  # listing order
  for n in names[:50]:  # the folder it lies in
    assert splits.split_of(os.path.join("a", "deep", n)) == first[n]
    assert splits.split_of(os.path.join(os.sep, "elsewhere", n)) == first[n]
  # The same 500 names always give the same three sets, of about the
  # documented shares (17% / 17% / 66%; binomial spread, 500 names).
  counts = {s: sum(v == s for v in first.values()) for s in splits.SPLITS}
  assert sum(counts.values()) == 500
  assert 60 <= counts["val"] <= 110 and 60 <= counts["test"] <= 110
  assert 280 <= counts["train"] <= 380


def test_select_is_disjoint_and_covers_every_name():
  names = _names(300) + ["x.png", "y.PNG"]
  parts = {s: splits.select(names, s) for s in splits.SPLITS}
  seen = [n for s in splits.SPLITS for n in parts[s]]
  assert sorted(seen) == sorted(names)  # every name in exactly one split
  assert len(set(seen)) == len(seen)
  assert splits.select(names, "all") == names
  for s in splits.SPLITS:
    assert parts[s] == [n for n in names if n in set(parts[s])]  # order kept


def test_bad_split_names_are_refused(tmp_path):
  for bad in ("validation", "", "Train", None):
    with pytest.raises(ValueError, match="expected one of"):
      splits.select(["a.png"], bad)
  with pytest.raises(ValueError, match="expected one of"):
    splits.list_split(str(tmp_path), "dev")


def test_list_split_of_a_folder(tmp_path):
  (tmp_path / "sub").mkdir()
  pixel = np.zeros((2, 2, 3), np.uint8)
  names = _names(40)
  for i, name in enumerate(names):
    folder = tmp_path / "sub" if i % 2 else tmp_path
    Image.fromarray(pixel).save(folder / name.replace(".jpg", ".png"))
  (tmp_path / "readme.txt").write_text("not an image")
  listed = {s: splits.list_split(str(tmp_path), s) for s in splits.CHOICES}
  assert len(listed["all"]) == 40
  assert sorted(listed["train"] + listed["val"] + listed["test"]) == sorted(listed["all"])
  for s in splits.SPLITS:
    assert listed[s] == sorted(listed[s])
    assert all(splits.split_of(p) == s for p in listed[s])
  only_val = tmp_path / "only_val"
  only_val.mkdir()
  val_name = next(n for n in names if splits.split_of(n.replace(".jpg", ".png")) == "val")
  Image.fromarray(pixel).save(only_val / val_name.replace(".jpg", ".png"))
  with pytest.raises(ValueError, match="None of the 1 images .* 'test' split"):
    splits.list_split(str(only_val), "test")


def test_the_corpus_splits_have_the_promised_sizes():
  # The training corpus names its 414 photos 0001.jpg .. 0414.jpg: its splits
  # follow from the names alone (the photos are not in the repository).
  names = [f"{i:04d}.jpg" for i in range(1, 415)]
  parts = {s: splits.select(names, s) for s in splits.SPLITS}
  assert {s: len(p) for s, p in parts.items()} == {"train": 275, "val": 74, "test": 65}
  assert sorted(sum(parts.values(), [])) == names  # disjoint and complete
