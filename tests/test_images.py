"""Tests of m2t_jax/images.py, the one image reader: EXIF orientation, 16-bit
scaling, colour modes and their notes, arrays, and broken files. The training
source (ImageFolderSource) must give the same pixels as read_rgb."""

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from m2t_jax import images
from m2t_jax.train import data
from m2t_jax.train.folder_source import TrainingDataError

ORIENTATION = 0x0112  # the EXIF tag


def _asymmetric(h=16, w=24):
  """An RGB image of flat 8x8 blocks of different colours (JPEG keeps them): with
  at least two block rows and three block columns, any flip or rotation of it
  is visible."""
  y, x = np.mgrid[:h, :w]
  block = (y // 8) * (w // 8) + x // 8
  return np.stack([block * 40 % 256, (y // 8) * 120 + 30, (x // 8) * 70 + 20],
                  -1).astype(np.uint8)


# What each EXIF orientation asks a viewer to do to the stored pixels (EXIF 2.3,
# tag 0x0112), written independently of Pillow.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # transverse
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise
}


def _save_with_orientation(path, array, orientation, **kwargs):
  exif = Image.Exif()
  exif[ORIENTATION] = orientation
  Image.fromarray(array).save(path, exif=exif, **kwargs)


def _png16(path, samples):
  """Writes uint16 (H, W, 2|3|4) samples as a 16-bit LA / RGB / RGBA PNG, which
  Pillow cannot write. Row y uses PNG filter y % 5 (None, Sub, Up, Average,
  Paeth), so that the reader's unfiltering is exercised with 16-bit pixels."""
  h, w, c = samples.shape
  bpp = 2 * c  # bytes per pixel
  rows = np.frombuffer(samples.astype(">u2").tobytes(), np.uint8).reshape(h, w * bpp)
  rows = rows.astype(np.int64)
  stream, up = [], np.zeros(w * bpp, np.int64)
  for y, row in enumerate(rows):
    left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
    up_left = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])
    kind = y % 5
    if kind == 0:
      predicted = 0
    elif kind == 1:
      predicted = left
    elif kind == 2:
      predicted = up
    elif kind == 3:
      predicted = (left + up) // 2
    else:
      p = left + up - up_left
      pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
      predicted = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    stream.append(bytes([kind]) + ((row - predicted) % 256).astype(np.uint8).tobytes())
    up = row

  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(
        ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

  colour_type = {2: 4, 3: 2, 4: 6}[c]
  header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                   + chunk(b"IDAT", zlib.compress(b"".join(stream))) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- #
# (a) EXIF orientation.
# --------------------------------------------------------------------------- #


def test_jpeg_with_exif_rotation_is_read_upright(tmp_path):
  stored = _asymmetric()  # 16 x 24
  path = tmp_path / "camera.jpg"
  _save_with_orientation(path, stored, 6, quality=95, subsampling=0)  # 4:4:4
  rgb, notes = images.read_rgb(str(path))
  expected = np.rot90(stored, -1)  # 24 x 16: the stored image turned 90 clockwise
  assert rgb.shape == (24, 16, 3) and rgb.dtype == np.uint8
  assert rgb.flags.c_contiguous
  assert np.abs(rgb.astype(int) - expected).max() <= 8  # JPEG: nearly exact
  assert np.abs(rgb.astype(int) - np.rot90(stored, 1)).max() > 60  # not the other way
  assert any("EXIF orientation 6" in n for n in notes)
  # The training source reads the same pixels.
  np.testing.assert_array_equal(data.ImageFolderSource(str(tmp_path))[0], rgb)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_exactly(tmp_path, orientation):
  # Random pixels, 5 x 7: any flip or rotation changes them. Lossless (PNG with
  # an eXIf chunk), so the comparison is exact.
  stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), np.uint8)
  path = tmp_path / "oriented.png"
  _save_with_orientation(path, stored, orientation)
  rgb, notes = images.read_rgb(str(path))
  np.testing.assert_array_equal(rgb, UPRIGHT[orientation](stored))
  assert bool(notes) == (orientation != 1)


# --------------------------------------------------------------------------- #
# (b) 16-bit samples: round(x * 255 / 65535).
# --------------------------------------------------------------------------- #

# x -> round(x * 255 / 65535). 129 and 383 are where x >> 8 (the top byte, the
# old training reader) gives one less; 32767 rounds down, 32768 up.
SIXTEEN = np.array([0, 65535, 257, 257 * 100, 257 * 254, 32767, 32768, 128, 129,
                    383, 65279], np.uint16)
EIGHT = np.array([0, 255, 1, 100, 254, 127, 128, 0, 1, 1, 254], np.uint8)


def test_scaling_values():
  np.testing.assert_array_equal(images.scale_16_to_8(SIXTEEN), EIGHT)
  every = np.arange(65536)
  np.testing.assert_array_equal(images.scale_16_to_8(every),
                                np.round(every * 255 / 65535).astype(np.uint8))


def test_16_bit_greyscale_png_through_reader_and_training_source(tmp_path):
  grey16 = np.tile(SIXTEEN, (3, 1))  # (3, 11)
  Image.fromarray(grey16).save(tmp_path / "grey16.png")
  assert Image.open(tmp_path / "grey16.png").mode == "I;16"  # a real 16-bit file
  rgb, notes = images.read_rgb(str(tmp_path / "grey16.png"))
  np.testing.assert_array_equal(rgb, np.repeat(np.tile(EIGHT, (3, 1))[..., None], 3, -1))
  assert any("16-bit values scaled" in n for n in notes)
  np.testing.assert_array_equal(data.ImageFolderSource(str(tmp_path))[0], rgb)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16_bit_colour_png_keeps_all_16_bits(tmp_path, channels):
  # Pillow alone decodes these to the top byte of each sample; 129 -> 0 there.
  rng = np.random.default_rng(channels)
  samples = rng.integers(0, 65536, (6, 7, channels)).astype(np.uint16)
  samples[0, :, 0] = SIXTEEN[:7]
  samples[1, :4, 0] = SIXTEEN[7:]
  path = tmp_path / "colour16.png"
  _png16(path, samples)
  rgb, notes = images.read_rgb(str(path))
  colour = samples[..., :1].repeat(3, -1) if channels == 2 else samples[..., :3]
  np.testing.assert_array_equal(rgb, images.scale_16_to_8(colour))
  np.testing.assert_array_equal(rgb[0, :, 0], EIGHT[:7])
  np.testing.assert_array_equal(rgb[1, :4, 0], EIGHT[7:])
  assert any("16-bit values scaled" in n for n in notes)
  assert any("alpha channel dropped" in n for n in notes) == (channels in (2, 4))
  np.testing.assert_array_equal(data.ImageFolderSource(str(tmp_path))[0], rgb)


def test_16_bit_arrays_as_tfds_gives_them():
  grey16 = np.tile(SIXTEEN, (2, 1))
  expected = np.repeat(np.tile(EIGHT, (2, 1))[..., None], 3, -1)
  np.testing.assert_array_equal(images.to_rgb_uint8(grey16), expected)
  rgb16 = np.stack([grey16, grey16[:, ::-1], grey16], -1)
  np.testing.assert_array_equal(images.to_rgb_uint8(rgb16),
                                np.stack([expected[..., 0], expected[:, ::-1, 0],
                                          expected[..., 0]], -1))
  big_endian = rgb16.astype(">u2")  # another byte order, the same values
  np.testing.assert_array_equal(images.to_rgb_uint8(big_endian), images.to_rgb_uint8(rgb16))


# --------------------------------------------------------------------------- #
# (c) Colour modes: pixels and notes.
# --------------------------------------------------------------------------- #


@pytest.fixture
def rgb_and_alpha():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  alpha = rng.integers(0, 256, (5, 7), dtype=np.uint8)
  alpha[0] = 0  # fully transparent: the colour must still be there
  return rgb, alpha


def _read(tmp_path, image, name="in.png"):
  path = tmp_path / name
  image.save(path)
  rgb, notes = images.read_rgb(str(path))
  assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[-1] == 3
  assert rgb.flags.c_contiguous and rgb.flags.writeable
  # Pixels of a PIL image (no EXIF): the same through to_rgb_uint8.
  np.testing.assert_array_equal(images.to_rgb_uint8(Image.open(path)), rgb)
  return rgb, notes


def test_rgb_is_unchanged_without_notes(tmp_path, rgb_and_alpha):
  rgb, _ = rgb_and_alpha
  out, notes = _read(tmp_path, Image.fromarray(rgb))
  np.testing.assert_array_equal(out, rgb)
  assert notes == []


def test_greyscale_is_replicated(tmp_path, rgb_and_alpha):
  grey = rgb_and_alpha[0][..., 0]
  out, notes = _read(tmp_path, Image.fromarray(grey))
  np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, -1))
  assert notes == ["L image: greyscale replicated to RGB"]
  bits = Image.fromarray(grey > 128)  # 1-bit: black and white
  out, notes = _read(tmp_path, bits, "bits.png")
  np.testing.assert_array_equal(out, np.repeat(np.where(grey > 128, 255, 0)[..., None],
                                               3, -1))
  assert notes and "1 image converted to RGB" in notes[0]


def test_alpha_is_dropped_and_colour_kept(tmp_path, rgb_and_alpha):
  rgb, alpha = rgb_and_alpha
  out, notes = _read(tmp_path, Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
  np.testing.assert_array_equal(out, rgb)  # not composited, even where alpha is 0
  assert any("RGBA image: alpha channel dropped" in n for n in notes)
  grey = rgb[..., 1]
  out, notes = _read(tmp_path, Image.fromarray(np.dstack([grey, alpha]), "LA"), "la.png")
  np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, -1))
  assert any("alpha channel dropped" in n for n in notes)
  assert any("greyscale replicated" in n for n in notes)


def test_palette_is_looked_up(tmp_path):
  indices = np.arange(35, dtype=np.uint8).reshape(5, 7)
  palette = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8)
  image = Image.fromarray(indices, "P")
  image.putpalette(palette.tobytes())
  out, notes = _read(tmp_path, image)
  np.testing.assert_array_equal(out, palette[indices])
  assert notes == ["P image converted to RGB"]
  image.info["transparency"] = 3  # a transparent index keeps its colour
  out, notes = _read(tmp_path, image, "transparent.png")
  np.testing.assert_array_equal(out, palette[indices])
  assert any("alpha channel dropped" in n for n in notes)


def test_cmyk_goes_through_pillow(tmp_path, rgb_and_alpha):
  cmyk = Image.fromarray(rgb_and_alpha[0]).convert("CMYK")
  out, notes = _read(tmp_path, cmyk, "in.tiff")
  np.testing.assert_array_equal(out, np.asarray(cmyk.convert("RGB")))
  assert notes == ["CMYK image converted to RGB"]


def test_arrays(rgb_and_alpha):
  rgb, alpha = rgb_and_alpha
  grey = rgb[..., 0]
  grey3 = np.repeat(grey[..., None], 3, -1)
  for array, expected in [(rgb, rgb), (grey, grey3), (grey[..., None], grey3),
                          (np.dstack([grey, alpha]), grey3),
                          (np.dstack([rgb, alpha]), rgb),
                          (rgb.astype(np.uint16) * 257, rgb)]:
    out = images.to_rgb_uint8(array)
    assert out.flags.c_contiguous and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4, 5), np.uint8), "expected an image"),
    (np.zeros((4, 4, 3), np.float32), "expected uint8 or uint16"),
    (np.zeros((0, 4, 3), np.uint8), "empty image"),
])
def test_bad_arrays_are_rejected(bad, message):
  with pytest.raises(images.ImageFileError, match=f"example 7: {message}"):
    images.to_rgb_uint8(bad, "example 7")


# --------------------------------------------------------------------------- #
# (d) Files that are not images.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name, content", [
    ("empty.png", b""),
    ("notes.png", b"just some text, not an image\n"),
    ("truncated.png", b"\x89PNG\r\n\x1a\n not really a png"),
])
def test_unreadable_files_raise_image_file_error(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(images.ImageFileError, match=name) as e:
    images.read_rgb(str(path))
  assert isinstance(e.value, ValueError)  # callers that catch ValueError still do
  # Training skips such a file; with none readable left, it says which.
  with pytest.raises(TrainingDataError, match=name):
    data.ImageFolderSource(str(tmp_path))


def test_a_truncated_photo_names_the_file(tmp_path):
  path = tmp_path / "cut.png"
  Image.fromarray(_asymmetric()).save(path)
  path.write_bytes(path.read_bytes()[:60])  # header intact, pixel data cut
  with pytest.raises(images.ImageFileError, match="cut.png"):
    images.read_rgb(str(path))


def test_missing_file_is_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError):
    images.read_rgb(str(tmp_path / "nowhere.png"))


# --------------------------------------------------------------------------- #
# One reader for every entry point: training data, eval and the CLI.
# --------------------------------------------------------------------------- #


def test_training_eval_and_cli_read_the_same_pixels(tmp_path):
  """A rotated camera JPEG and a 16-bit PNG: the training source, ``m2t eval``'s
  image items and ``m2t compress`` all see what read_rgb returns."""
  from m2t_jax import Codec, get_config  # noqa: PLC0415
  from m2t_jax.app import cli  # noqa: PLC0415
  from m2t_jax.coding import bitstream  # noqa: PLC0415
  from m2t_jax.evaluation import rd  # noqa: PLC0415
  folder = tmp_path / "imgs"
  folder.mkdir()
  _save_with_orientation(folder / "a_camera.jpg", _asymmetric(16, 40), 6, quality=95)
  deep = (np.arange(20 * 12).reshape(20, 12) * 271 % 65536).astype(np.uint16)
  Image.fromarray(deep).save(folder / "b_deep.png")
  paths = sorted(str(p) for p in folder.iterdir())
  reference = [images.read_rgb(p)[0] for p in paths]
  assert reference[0].shape == (40, 16, 3)  # upright: rotated from 16 x 40
  assert reference[1][0, 1, 0] == round(271 * 255 / 65535)
  training = data.ImageFolderSource(str(folder))
  evaluation = rd.folder_images(str(folder))
  codec = Codec.from_config(get_config("m2t", "tiny"), seed=0)
  for i, path in enumerate(paths):
    np.testing.assert_array_equal(training[i], reference[i])
    np.testing.assert_array_equal(evaluation[i].load(), reference[i])
    out = tmp_path / f"{i}.m2t"
    assert cli.main(["compress", path, str(out), "--config", "m2t:tiny", "--seed", "0",
                     "--refine-steps", "0"]) == 0
    stream = out.read_bytes()
    header, _ = bitstream.unpack(stream)
    assert (header.height, header.width) == reference[i].shape[:2]
    # The codec is deterministic: equal bytes mean the CLI coded these pixels.
    assert stream == codec.compress(reference[i])


def _png_claiming(width, height):
  """A 57-byte PNG whose header claims width x height 8-bit RGB pixels (no data)."""
  def chunk(kind, body):
    return (len(body).to_bytes(4, "big") + kind + body
            + zlib.crc32(kind + body).to_bytes(4, "big"))
  ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path):
  # 20000 x 10000 is past Pillow's decompression-bomb error limit (2 x 89.5 M
  # pixels): Pillow raises DecompressionBombError, which is not an OSError.
  path = tmp_path / "bomb.png"
  path.write_bytes(_png_claiming(20000, 10000))
  with pytest.raises(images.ImageFileError, match="bomb.png"):
    images.read_rgb(str(path))


def test_a_corrupt_bmp_header_is_an_image_file_error(tmp_path):
  path = tmp_path / "corrupt.bmp"
  Image.fromarray(np.zeros((24, 20, 3), np.uint8)).save(path)
  raw = bytearray(path.read_bytes())
  raw[25] = 0x40  # the top byte of the height: a 1 G-row claim
  path.write_bytes(bytes(raw))
  with pytest.raises(images.ImageFileError, match="corrupt.bmp"):
    images.read_rgb(str(path))


def test_max_pixels_is_checked_from_the_header_before_decoding(tmp_path):
  # 95 M pixels: between Pillow's warning (89.5 M) and error (179 M) limits, so
  # Pillow alone would decode it (1.2 GB of RAM for a real file of this size).
  path = tmp_path / "big.png"
  path.write_bytes(_png_claiming(10000, 9500))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # our limit replaces Pillow's warning
    with pytest.raises(images.ImageFileError,
                       match=r"big.png.*10000 x 9500 \(95000000 pixels\), more than"):
      images.read_rgb(str(path), max_pixels=89_478_485)
  # Above the limit it is decoded, and only then found to have no pixel data.
  with pytest.raises(images.ImageFileError, match="cannot read"):
    images.read_rgb(str(path), max_pixels=95_000_000)


def test_a_malformed_exif_tag_is_an_image_file_error(tmp_path):
  # Pillow's EXIF rewrite in exif_transpose raises struct.error on a SHORT tag
  # holding text, not an OSError: every error of the decoder must be ours.
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate: exif_transpose rewrites the EXIF
  exif[0x010F] = "Cam"  # ASCII (type 2)
  raw = exif.tobytes()
  tag = struct.pack(">HH", 0x010F, 2) if raw[6:8] == b"MM" else struct.pack("<HH", 0x010F, 2)
  bad = struct.pack(">HH", 0x0108, 2) if raw[6:8] == b"MM" else struct.pack("<HH", 0x0108, 2)
  assert raw.count(tag) == 1
  path = tmp_path / "odd_exif.jpg"
  Image.fromarray(_asymmetric()).save(path, exif=raw.replace(tag, bad))
  with pytest.raises(images.ImageFileError, match="odd_exif.jpg"):
    images.read_rgb(str(path))


def test_only_the_first_frame_of_an_animation_is_read_and_said(tmp_path):
  first, second = _asymmetric(), 255 - _asymmetric()
  path = tmp_path / "anim.png"
  Image.fromarray(first).save(path, save_all=True, append_images=[Image.fromarray(second)])
  rgb, notes = images.read_rgb(str(path))
  np.testing.assert_array_equal(rgb, first)
  assert any("2 frames" in n and "only the first" in n for n in notes), notes
  assert not any("frames" in n for n in images.read_rgb(str(_still(tmp_path)))[1])


def _still(tmp_path):
  path = tmp_path / "still.png"
  Image.fromarray(_asymmetric()).save(path)
  return path
