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
  shown, left_out = demo.classical_codecs()
  assert shown[:2] == ["avif", "webp"] and not left_out  # this Pillow writes AVIF
  assert set(by_codec) == {"M2T", "AVIF", "WEBP", "JPEG"}
  # The side-by-side PNG: original | M2T | AVIF | WebP | JPEG, each under its label
  # strip; the pixels under the strip are the images themselves (recomputed here:
  # each codec at the quality its record names; Pillow encodes deterministically).
  side = np.asarray(Image.open(tmp_path / "astronaut_side_by_side.png"))
  strip = side.shape[0] - 96
  assert 8 <= strip <= 60 and side.shape[1:] == (5 * 96, 3)
  panels = [images[0][1], decoded]
  for codec in ("AVIF", "WEBP", "JPEG"):
    quality = int(by_codec[codec]["codec"].split()[1][1:])
    data, classical_decoded = classical.encode_decode(images[0][1], codec.lower(), quality)
    panels.append(classical_decoded)
    assert by_codec[codec]["bpp"] == 8 * len(data) / (96 * 96)
  for i, image in enumerate(panels):
    np.testing.assert_array_equal(side[strip:, 96 * i:96 * (i + 1)], image)
  labels = [side[:strip, 96 * i:96 * (i + 1)] for i in range(5)]
  for label in labels:  # dark text on a light strip
    assert (label.min(axis=-1) < 100).sum() > 20 and (label.min(axis=-1) > 200).mean() > 0.5
  assert all(not np.array_equal(a, b) for a, b in zip(labels, labels[1:], strict=False))
  assert by_codec["M2T"]["bpp"] == 8 * len(stream) / (96 * 96)
  # Each classical codec at the size closest to the model's: one quality step
  # up or down is no closer (qualities 1..95).
  target = by_codec["M2T"]["bpp"]
  for codec in ("AVIF", "WEBP"):
    quality = int(by_codec[codec]["codec"].split()[1][1:])
    gap = abs(by_codec[codec]["bpp"] - target)
    for q in (quality - 1, quality + 1):
      if 1 <= q <= 95:
        data, _ = classical.encode_decode(images[0][1], codec.lower(), q)
        assert abs(8 * len(data) / (96 * 96) - target) >= gap
  with open(tmp_path / "results.json") as f:
    assert len(json.load(f)) == len(records)
  table = demo.format_table(records)
  assert "M2T" in table and "AVIF" in table and "JPEG" in table
  (line,) = demo.comparison_lines(records)
  best = max((r for r in records if r["codec"] != "M2T"), key=lambda r: r["psnr"])
  assert line.startswith("astronaut: M2T ") and f"best classical at that size: " \
      f"{best['codec']}," in line
  assert f"(M2T {by_codec['M2T']['psnr'] - best['psnr']:+.2f} dB)" in line
  assert "[demo]" in capsys.readouterr().err  # progress is shown


def test_codecs_this_pillow_cannot_write_are_named_not_fatal():
  shown, notes = demo.classical_codecs(["jpeg", "webp"])
  assert shown == ["webp", "jpeg"]
  (note,) = notes
  assert note.startswith("AVIF: not shown") and "libavif" in note
  assert demo.classical_codecs(["avif", "jpeg", "webp"]) == (["avif", "webp", "jpeg"], [])
