"""m2t demo end to end on one small image."""

import json
import os

import numpy as np
from PIL import Image

from m2t_jax import Codec
from m2t_jax.app import demo
from m2t_jax.evaluation import classical


def test_demo_on_one_small_image(tmp_path, capsys):
  images = demo.sample_images(["astronaut"], max_side=96)
  codecs = [("M2T", Codec.load("m2t"))]
  records = demo.run(str(tmp_path), images=images, codecs=codecs)
  names = sorted(os.listdir(tmp_path))
  assert {"astronaut_m2t.m2t", "astronaut_m2t.png", "astronaut_side_by_side.png",
          "results.json"} <= set(names)
  # The .m2t file is a real stream that decodes to the saved reconstruction.
  with open(tmp_path / "astronaut_m2t.m2t", "rb") as f:
    stream = f.read()
  decoded = codecs[0][1].decompress(stream)
  np.testing.assert_array_equal(decoded, np.asarray(Image.open(tmp_path / "astronaut_m2t.png")))
  by_codec = {r["codec"].split()[0]: r for r in records}
  # The side-by-side PNG: original | M2T | JPEG, each under its label strip; the
  # pixels under the strip are the images themselves (recomputed here: the
  # JPEG at the quality the record names, which Pillow encodes deterministically).
  side = np.asarray(Image.open(tmp_path / "astronaut_side_by_side.png"))
  strip = side.shape[0] - 96
  assert 8 <= strip <= 60 and side.shape[1:] == (3 * 96, 3)
  quality = int(by_codec["JPEG"]["codec"].split()[1][1:])
  _, jpeg = classical.encode_decode(images[0][1], "jpeg", quality)
  panels = [images[0][1], decoded, jpeg]
  for i, image in enumerate(panels):
    np.testing.assert_array_equal(side[strip:, 96 * i:96 * (i + 1)], image)
  labels = [side[:strip, 96 * i:96 * (i + 1)] for i in range(3)]
  for label in labels:  # dark text on a light strip
    assert (label.min(axis=-1) < 100).sum() > 20 and (label.min(axis=-1) > 200).mean() > 0.5
  assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[1], labels[2])
  assert by_codec["M2T"]["bpp"] == 8 * len(stream) / (96 * 96)
  assert set(by_codec) == {"M2T", "JPEG", "WEBP"}
  with open(tmp_path / "results.json") as f:
    assert len(json.load(f)) == len(records)
  table = demo.format_table(records)
  assert "M2T" in table and "JPEG" in table
  assert "[demo]" in capsys.readouterr().err  # progress is shown
