"""The m2t command: compress / decompress / info, colour modes, one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from m2t_jax import Codec, get_config
from m2t_jax.app import cli
from m2t_jax.refine import RefineSettings

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(*args):
  return subprocess.run([sys.executable, "-m", "m2t_jax.app.cli", *args], check=False,
                        capture_output=True, text=True, env=ENV)


def test_compress_decompress_info_subprocess(tmp_path):
  image = skdata.coffee()[:60, :90]
  Image.fromarray(image).save(tmp_path / "in.png")
  r = _run("compress", str(tmp_path / "in.png"), str(tmp_path / "a.m2t"), "--config", "m2t:tiny")
  assert r.returncode == 0, r.stderr
  r = _run("decompress", str(tmp_path / "a.m2t"), str(tmp_path / "out.png"),
           "--config", "m2t:tiny")
  assert r.returncode == 0, r.stderr
  decoded = np.asarray(Image.open(tmp_path / "out.png"))
  codec = Codec.from_config(get_config("m2t", "tiny"))
  # compress refines the latent by default (refine.py); the decoder is unaware.
  default = RefineSettings(cli.DEFAULT_REFINE_STEPS, cli.DEFAULT_REFINE_LR)
  np.testing.assert_array_equal(decoded, codec.estimate(image, refine=default)["reconstruction"])
  r = _run("info", str(tmp_path / "a.m2t"))
  assert r.returncode == 0 and "m2t" in r.stdout and "90" in r.stdout and "60" in r.stdout


@pytest.mark.parametrize("args,message", [
    (("decompress", "{tmp}/empty.m2t", "{tmp}/o.png", "--config", "m2t:tiny"), "truncated"),
    (("compress", "{tmp}/empty.png", "{tmp}/o.m2t", "--config", "m2t:tiny"), "cannot read"),
    (("compress", "{tmp}/missing.png", "{tmp}/o.m2t", "--config", "m2t:tiny"), "No such file"),
    (("compress", "{tmp}/ok.png", "{tmp}/o.m2t", "--checkpoint", "{tmp}/none"), "saved model"),
    (("info", "{tmp}/ok.png"), "not an m2t_jax stream"),
])
def test_user_errors_are_one_line(tmp_path, args, message):
  (tmp_path / "empty.m2t").write_bytes(b"")
  (tmp_path / "empty.png").write_bytes(b"")
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "ok.png")
  r = _run(*(a.format(tmp=tmp_path) for a in args))
  assert r.returncode == 1
  assert "Traceback" not in r.stderr
  lines = [line for line in r.stderr.splitlines() if line.startswith("m2t: error:")]
  assert len(lines) == 1 and message in lines[0], r.stderr


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "I;16", "1", "CMYK"])
def test_colour_modes_are_converted(tmp_path, capsys, mode):
  rgb = skdata.chelsea()[:20, :30]
  if mode == "I;16":
    img = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
    expected = rgb[..., 0:1].repeat(3, 2)
  else:
    img = Image.fromarray(rgb).convert(mode)
    expected = np.asarray(img.convert("RGBA").convert("RGB") if "A" in mode
                          else img.convert("RGB"))
  path = tmp_path / ("in.tiff" if mode == "CMYK" else "in.png")
  img.save(path)
  from m2t_jax import images
  read, notes = images.read_rgb(str(path))
  assert read.dtype == np.uint8 and read.shape == (20, 30, 3)
  np.testing.assert_array_equal(read, expected)
  assert notes  # every conversion is reported
  assert cli.main(["compress", str(path), str(tmp_path / "a.m2t"), "--config", "m2t:tiny",
                   "--refine-steps", "0"]) == 0
  assert "note:" in capsys.readouterr().err


def test_decompress_max_pixels_flag(tmp_path, capsys):
  Image.fromarray(skdata.coffee()[:40, :30]).save(tmp_path / "in.png")
  common = ["--config", "m2t:tiny"]
  assert cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / "a.m2t"), *common,
                   "--refine-steps", "0"]) == 0
  out = str(tmp_path / "out.png")
  assert cli.main(["decompress", str(tmp_path / "a.m2t"), out, *common,
                   "--max-pixels", "1199"]) == 1
  err = capsys.readouterr().err
  assert "30 x 40 image (1200 pixels)" in err and "--max-pixels" in err
  assert not os.path.exists(out)
  assert cli.main(["decompress", str(tmp_path / "a.m2t"), out, *common,
                   "--max-pixels", "1200"]) == 0
  assert np.asarray(Image.open(out)).shape == (40, 30, 3)


def test_compress_size_schedule_flag_and_info(tmp_path, capsys):
  image = skdata.coffee()[:40, :30]
  Image.fromarray(image).save(tmp_path / "in.png")
  common = ["--config", "nested:tiny"]
  stream = str(tmp_path / "a.m2t")
  assert cli.main(["compress", str(tmp_path / "in.png"), stream, *common,
                   "--size-schedule", "2,1,1,0", "--refine-steps", "0"]) == 0
  assert cli.main(["info", stream]) == 0
  assert "size schedule: exits 2,1,1,0" in capsys.readouterr().out
  out = str(tmp_path / "out.png")
  assert cli.main(["decompress", stream, out, *common]) == 0
  expected = Codec.from_config(get_config("nested", "tiny")).estimate(image)
  np.testing.assert_array_equal(np.asarray(Image.open(out)), expected["reconstruction"])
  # Inadmissible, and a kind with one size: one-line errors, nothing written.
  for args, message in ((common + ["--size-schedule", "0,1,1,2"], "not admissible"),
                        (["--config", "m2t:tiny", "--size-schedule", "fast"],
                         "one model size")):
    assert cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / "b.m2t"),
                     *args]) == 1
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "b.m2t")


def _one_error_line(capsys):
  lines = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("m2t: error:")]
  assert len(lines) == 1, lines
  return lines[0]


def _break_params(folder):  # one array one element longer than the config says
  with np.load(folder / "params.npz") as flat:
    arrays = dict(flat)
  key = next(k for k in sorted(arrays) if k.endswith("bias"))
  arrays[key] = np.concatenate([arrays[key], arrays[key][:1]])
  np.savez(folder / "params.npz", **arrays)
  return key


def _nan_params(folder, prefix):
  with np.load(folder / "params.npz") as flat:
    arrays = {k: np.full_like(v, np.nan) if k.startswith(prefix) else v
              for k, v in flat.items()}
  np.savez(folder / "params.npz", **arrays)


def _edit_config(folder, edit):
  path = folder / "config.json"
  path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.mark.parametrize("breakage, message", [
    (_break_params, "do not match its config.json"),
    (lambda f: _edit_config(f, lambda c: [1, 2]), "is not a model config"),
    (lambda f: _edit_config(f, lambda c: {k: v for k, v in c.items() if k != "model"}),
     "is not a model config"),
    (lambda f: _edit_config(f, lambda c: {**c, "latent_channels": "8"}),
     "does not describe a model"),
    (lambda f: (f / "params.npz").write_bytes(b"PK\x03\x04 not a zip"),
     "Cannot read the parameters"),
    # NaN weights in D would decode every image to black without an error.
    (lambda f: _nan_params(f, "synthesis/"), "are not all finite (NaN or inf in synthesis/"),
])
def test_a_broken_model_folder_is_a_one_line_error(tmp_path, capsys, breakage, message):
  folder = tmp_path / "model"
  Codec.from_config(get_config("m2t", "tiny")).save(str(folder))
  breakage(folder)
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "in.png")
  assert cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / "o.m2t"),
                   "--checkpoint", str(folder), "--refine-steps", "0"]) == 1
  assert message in _one_error_line(capsys)
  assert not (tmp_path / "o.m2t").exists()


@pytest.mark.parametrize("source, message", [
    ("x = 1\n", "defines no get_config"),
    ("def get_config(variant):\n  return None\n", "returned NoneType"),
    ("def get_config(variant):\n return 1\n  oops\n", "IndentationError"),
    ("def get_config(variant):\n  return {}['missing']\n", "KeyError"),
])
def test_a_broken_config_file_is_a_one_line_error(tmp_path, capsys, source, message):
  path = tmp_path / "my_config.py"
  path.write_text(source)
  assert cli.main(["summary", str(path)]) == 1
  line = _one_error_line(capsys)
  assert message in line and "my_config.py" in line


def test_a_seed_outside_int64_is_a_one_line_error(tmp_path, capsys):
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "in.png")
  assert cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / "o.m2t"),
                   "--config", "m2t:tiny", "--seed", str(2**63), "--refine-steps", "0"]) == 1
  assert "seed must be an integer" in _one_error_line(capsys)


def test_compress_refuses_images_above_max_pixels(tmp_path, capsys):
  Image.fromarray(skdata.coffee()[:40, :30]).save(tmp_path / "in.png")
  out = tmp_path / "a.m2t"
  args = ["compress", str(tmp_path / "in.png"), str(out), "--config", "m2t:tiny",
          "--refine-steps", "0"]
  assert cli.main([*args, "--max-pixels", "1199"]) == 1
  line = _one_error_line(capsys)
  assert "30 x 40 (1200 pixels)" in line and "--max-pixels" in line
  assert not out.exists()
  assert cli.main([*args, "--max-pixels", "1200"]) == 0 and out.exists()


def test_eval_refuses_a_folder_as_output_before_any_work(tmp_path, capsys):
  (tmp_path / "images").mkdir()
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "a.png")
  (tmp_path / "results").mkdir()
  assert cli.main(["eval", "--images", str(tmp_path / "images"), "--config", "m2t:tiny",
                   "--output", str(tmp_path / "results"), "--refine-steps", "0"]) == 1
  assert "is a folder" in _one_error_line(capsys)
  assert list((tmp_path / "results").iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_pixels_must_be_positive(tmp_path, capsys, value):
  with pytest.raises(SystemExit) as e:  # argparse: a usage error, status 2
    cli.main(["decompress", str(tmp_path / "a.m2t"), str(tmp_path / "o.png"),
              "--max-pixels", value])
  assert e.value.code == 2
  assert "must be a positive integer" in capsys.readouterr().err


def test_decompress_writes_only_png(tmp_path, capsys):
  stream = tmp_path / "a.m2t"
  stream.write_bytes(b"not even read")  # the name is refused before any work
  for name in ("o.jpg", "o.webp", "o"):
    assert cli.main(["decompress", str(stream), str(tmp_path / name),
                     "--config", "m2t:tiny"]) == 1
    assert "must be a .png file" in _one_error_line(capsys)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.m2t"]


def test_stream_files_are_read_no_further_than_their_header_says(tmp_path, capsys):
  from m2t_jax.coding import bitstream  # noqa: PLC0415
  codec = Codec.from_config(get_config("m2t", "tiny"))
  stream = codec.compress(skdata.coffee()[:20, :24])
  junk = b"\x00" * (1 << 20)
  (tmp_path / "long.m2t").write_bytes(stream + junk)  # e.g. two files concatenated
  # One byte past the declared end is enough to see the trailing bytes.
  assert cli._read_stream(str(tmp_path / "long.m2t")) == stream + b"\x00"
  assert cli.main(["info", str(tmp_path / "long.m2t")]) == 1
  assert "extra bytes appended" in _one_error_line(capsys)
  (tmp_path / "zeros.m2t").write_bytes(junk)  # no stream: the first bytes tell
  assert len(cli._read_stream(str(tmp_path / "zeros.m2t"))) == bitstream.PREFIX_BYTES
  assert cli.main(["info", str(tmp_path / "zeros.m2t")]) == 1
  assert "not an m2t_jax stream" in _one_error_line(capsys)
  (tmp_path / "ok.m2t").write_bytes(stream)
  assert cli._read_stream(str(tmp_path / "ok.m2t")) == stream
