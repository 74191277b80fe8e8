"""Hostile and unlucky input: no silent wrong output, bounded work.

Decoders whose tables differ from the encoder's, forged headers (CRC
recomputed), huge claimed sizes, out-of-range latents, older formats, and a
sample of the fuzz harness (experiments/fuzz.py) with every decode under a time
limit.
"""

import dataclasses
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from skimage import data as skdata

from m2t_jax import (BitstreamError, Codec, DecodeMismatchError, LatentError,
                     StreamTooLargeError, get_config)
from m2t_jax.coding import bitstream
from m2t_jax.entropy import registry
from conftest import load_experiment



@pytest.fixture(scope="module")
def codecs():
  return {kind: Codec.from_config(get_config(kind, "tiny"), seed=0) for kind in ("m2t", "mt")}


def _image(h=30, w=50):
  return np.ascontiguousarray(skdata.chelsea()[:h, :w])


def _perturbed(tables_fn, scale):
  """``EntropyCoder._tables`` with the top entry of every table raised by a
  relative ``scale``: a decoder whose float tables differ slightly from the
  encoder's (as on another backend or XLA version)."""
  def perturbed(step):
    narrow, wide, narrow_pmf, wide_pmf = tables_fn(step)
    def bump(pmf):
      pmf = np.array(pmf, np.float64)
      rows = np.arange(pmf.shape[0])
      pmf[rows, pmf.argmax(1)] *= 1 + scale
      return pmf
    return narrow, wide, bump(narrow_pmf), None if wide_pmf is None else bump(wide_pmf)
  return perturbed


@pytest.mark.parametrize("kind", ["m2t", "mt"])
def test_tables_that_differ_raise_decode_mismatch(codecs, kind):
  codec = codecs[kind]
  image = _image()
  data = codec.compress(image)
  coder = codec.entropy_coder
  latent_stream = coder.compress(codec.analyze(image)[0])
  # ~1e-3 of the top entry: thousands of units of the coder's 2^24 fixed point,
  # so its integer tables change; the floats differ in the 10th bit.
  coder._tables = _perturbed(type(coder)._tables.__get__(coder), 1e-3)
  try:
    with pytest.raises(DecodeMismatchError, match="written on cpu, JAX .* read on cpu"):
      codec.decompress(data)
    with pytest.raises(DecodeMismatchError):
      coder.decompress(latent_stream)
  finally:
    del coder._tables
  np.testing.assert_array_equal(codec.decompress(data), codec.estimate(image)["reconstruction"])


def test_mismatch_message_names_both_sides(codecs):
  codec = codecs["m2t"]
  header, payload = bitstream.unpack(codec.compress(_image()))
  forged = bitstream.pack(dataclasses.replace(header, backend="gpu", jax=(0, 4, 30),
                                              latent_crc=header.latent_crc ^ 1), payload)
  with pytest.raises(DecodeMismatchError, match=r"written on gpu, JAX 0\.4\.30 .*read on "
                     r"cpu.*decode it on gpu, JAX 0\.4\.30"):
    codec.decompress(forged)
  assert issubclass(DecodeMismatchError, BitstreamError)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 2.0**31 + 5, -(2.0**31) - 1, 0.5])
def test_bad_latents_raise_at_every_entry_point(codecs, bad):
  codec = codecs["m2t"]
  y = codec.analyze(_image(16, 16)).astype(np.float64)
  y[0, 0, 0, 0] = bad
  coder = codec.entropy_coder
  calls = [lambda: codec.compress_latent(y, 16, 16), lambda: coder.compress(y[0]),
           lambda: coder.encode_tokens(y), lambda: coder.estimate_bits(y)]
  if bad != 0.5:  # reconstruct takes fractional values: progressive decoding's means
    calls.append(lambda: codec.reconstruct(y, 16, 16))
  for call in calls:
    with pytest.raises(LatentError):
      call()
  with pytest.raises(LatentError, match="int32"):
    coder.compress(np.full((1, 1, 8), 2**31 + 5, np.int64))


def _forge(data, **changes):
  header, payload = bitstream.unpack(data)
  return bitstream.pack(dataclasses.replace(header, **changes), payload)


@pytest.mark.parametrize("kind", ["m2t", "mt"])
def test_header_edits_with_crc_recomputed_are_refused(codecs, kind):
  codec = codecs[kind]
  data = codec.compress(_image())
  other_kind = "mt" if kind == "m2t" else "m2t"
  for changes, match in [({"num_steps": 3}, "number of steps is 3"),
                         ({"order": "random"}, "schedule order is 'random'"),
                         ({"order": "raster"}, "schedule order is 'raster'"),
                         ({"alpha": 2.0}, "schedule alpha is 2.0"),
                         ({"model_kind": other_kind}, f"model kind is '{other_kind}'"),
                         ({"fingerprint": bytes(16)}, "another model"),
                         ({"height": 300}, "did not decode"),  # latent 2x4 -> 19x4
                         ({"width": 1}, "did not decode"),
                         ({"latent_crc": 0}, "CRC32")]:
    with pytest.raises(BitstreamError, match=match):
      codec.decompress(_forge(data, **changes))
  # Edits that decoding does not read still decode, to the very same image.
  np.testing.assert_array_equal(codec.decompress(_forge(data, jax=(9, 9, 9))),
                                codec.decompress(data))


def test_max_pixels_guards_and_can_be_raised(codecs):
  codec = codecs["mt"]
  small = codec.compress(_image(1, 1))
  forged = _forge(small, height=256, width=192)
  codec.max_pixels = 256 * 192 - 1
  try:
    with pytest.raises(StreamTooLargeError, match=r"192 x 256 image \(49152 pixels\).*"
                       r"max_pixels"):
      codec.decompress(forged)
    codec.max_pixels = 256 * 192
    # Past the limit it decodes, and stops at the first step the 8-byte payload
    # cannot pay for (4 steps in all).
    with pytest.raises(DecodeMismatchError, match="ran out at step [123] of 4"):
      codec.decompress(forged)
  finally:
    codec.max_pixels = bitstream.DEFAULT_MAX_PIXELS
  coder = codec.entropy_coder
  latent = _forge(coder.compress(np.zeros((1, 1, 8), int)), height=1000, width=1000)
  with pytest.raises(StreamTooLargeError, match="1000 x 1000 latent.*coder.max_cells"):
    coder.decompress(latent)
  # The encoders refuse what a decoder with the same limit would, before any work.
  codec.max_pixels = 16 * 16 - 1
  try:
    with pytest.raises(ValueError, match=r"16 x 16 \(256 pixels\).*codec.max_pixels"):
      codec.compress_latent(np.zeros((1, 1, 1, 8), int), 16, 16)
  finally:
    codec.max_pixels = bitstream.DEFAULT_MAX_PIXELS
  coder.max_cells = 3
  try:
    with pytest.raises(ValueError, match=r"2 x 2 \(4 cells\).*coder.max_cells"):
      coder.compress(np.zeros((2, 2, 8), int))
  finally:
    coder.max_cells = bitstream.DEFAULT_MAX_PIXELS // 256


def test_older_format_is_refused_with_a_message(codecs):
  body = struct.pack("<4sBBBBfII16sI", b"M2TJ", 2, 1, 0, 4, 2.2, 30, 50,
                     codecs["m2t"].fingerprint, 4) + bytes(4)
  with pytest.raises(BitstreamError, match="format version 2 by an older m2t_jax.*5abe423"):
    codecs["m2t"].decompress(body + struct.pack("<I", zlib.crc32(body)))


@pytest.fixture(scope="module")
def fresh_process(codecs, tmp_path_factory):
  """A new Python process without the tests' compilation cache: decodes an MT
  and an M2T stream, then times an M2T stream whose header claims 65536 x 65536
  (CRC recomputed); returns (folder, image, its report)."""
  tmp = tmp_path_factory.mktemp("fresh")
  image = _image(30, 50)
  for kind, codec in codecs.items():
    (tmp / f"{kind}.m2t").write_bytes(codec.compress(image))
  forged = _forge(codecs["m2t"].compress(_image(1, 1)), height=65536, width=65536)
  (tmp / "forged.m2t").write_bytes(forged)
  script = textwrap.dedent(f"""
      import json, resource, time
      import numpy as np
      from m2t_jax import Codec, StreamTooLargeError, get_config
      tmp = {str(tmp)!r}
      report = {{}}
      for kind in ("mt", "m2t"):
        codec = Codec.from_config(get_config(kind, "tiny"), seed=0)
        data = open(f"{{tmp}}/{{kind}}.m2t", "rb").read()
        np.save(f"{{tmp}}/{{kind}}.npy", codec.decompress(data))
      data = open(f"{{tmp}}/forged.m2t", "rb").read()
      before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
      t0 = time.perf_counter()
      try:
        codec.decompress(data)
        report["refused"] = False
      except StreamTooLargeError:
        report["refused"] = True
      report["seconds"] = time.perf_counter() - t0
      peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
      report["peak_growth_mb"] = (peak - before) / 1024
      report["cache"] = __import__("jax").config.jax_compilation_cache_dir
      print(json.dumps(report))
  """)
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env["JAX_PLATFORMS"] = "cpu"
  run = subprocess.run([sys.executable, "-c", script], check=False, env=env,
                       capture_output=True,
                       text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  return tmp, image, json.loads(run.stdout.strip().splitlines()[-1])


def test_decoding_in_a_fresh_process_without_compilation_cache(codecs, fresh_process):
  tmp, image, report = fresh_process
  assert not report["cache"]  # really without the shared cache
  for kind, codec in codecs.items():
    np.testing.assert_array_equal(np.load(tmp / f"{kind}.npy"),
                                  codec.estimate(image)["reconstruction"])


def test_forged_huge_header_is_refused_fast_and_small(fresh_process):
  _, _, report = fresh_process
  assert report["refused"]
  assert report["seconds"] < 1.0
  assert report["peak_growth_mb"] < 500


def test_fuzz_sample_every_kind_under_a_time_limit():
  fuzz = load_experiment("fuzz")
  # Small forged sizes keep the (untimed) compilation of new shapes cheap here;
  # experiments/fuzz.py runs the full list.
  report = fuzz.run(40, seed=1, time_limit=5.0, kinds=registry.names(),
                    forged_sizes=((31, 50), (1, 1), (64, 64), (65536, 65536)))
  assert report["failures"] == 0, report["failure_examples"][:3]
  assert set(report["kinds"]) == set(registry.names())
  for outcome in report["by_outcome"]:
    assert outcome.startswith("BitstreamError") or outcome == "decoded-same", outcome
  # Every family ran, and the forged payloads reached the decoder's own checks.
  families = report["by_mutation"]
  assert {"raw:bit-flip", "forged:size", "forged:payload-bit"} <= set(families)
  assert families["forged:payload-bit"].get("BitstreamError:DecodeMismatchError", 0) > 0
  assert report["slowest"]["seconds"] < 5.0
