"""Tests for m2t_jax.coding.bitstream: round trip and every check in unpack."""

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from m2t_jax.app import info
from m2t_jax.coding import bitstream as bs
from m2t_jax.entropy import registry

_HEADER = bs.Header(model_kind="m2t", order="qlds", num_steps=12, alpha=2.0,
                    height=512, width=768, fingerprint=bytes(range(16)),
                    latent_crc=0xDEADBEEF, backend="gpu", jax=(0, 4, 38))
_PAYLOAD = b"\x01\x02\x03\x04\xff\x00\x10\x20"


def _craft(*, magic=bs.MAGIC, version=bs.FORMAT_VERSION, kind=1, order=0, steps=12, alpha=2.0,
           height=512, width=768, fingerprint=bytes(range(16)), latent_crc=0xDEADBEEF,
           backend=2, jax=(0, 4, 38), payload=_PAYLOAD, payload_len=None, extra=b"",
           widths=b"\x00", rate=b"\xff\xff", schedule=b"\x00"):
  """A version 6 stream with arbitrary raw field values and a valid CRC over it
  (the layout written out from the module docstring's table); ``widths`` is the
  step-widths byte (absent from versions 3 and 4), ``rate`` the u16 rate code
  (absent from versions 3 to 5), ``schedule`` the raw size-schedule block (n,
  then n bytes), absent from version 3."""
  if payload_len is None:
    payload_len = len(payload)
  body = (magic + bytes([version, kind, order, steps]) + struct.pack("<f", alpha)
          + struct.pack("<II", height, width) + fingerprint
          + struct.pack("<I", latent_crc) + bytes([backend, *jax])
          + struct.pack("<I", payload_len) + widths + rate + schedule + payload + extra)
  return body + struct.pack("<I", zlib.crc32(body))


def _craft_v2(version=2):
  """A stream in the layout of format versions 1 and 2 (44-byte overhead)."""
  body = struct.pack("<4sBBBBfII16sI", bs.MAGIC, version, 1, 0, 12, 2.0, 512, 768,
                     bytes(16), len(_PAYLOAD)) + _PAYLOAD
  return body + struct.pack("<I", zlib.crc32(body))


def test_round_trip():
  data = bs.pack(_HEADER, _PAYLOAD)
  assert len(data) == bs.HEADER_BYTES + len(_PAYLOAD)
  assert bs.HEADER_BYTES == 56
  assert data[:4] == b"M2TJ"
  header, payload = bs.unpack(data)
  assert header == _HEADER
  assert payload == _PAYLOAD
  # The crafted layout is byte-for-byte what pack writes: the docstring table holds.
  assert _craft() == data


@pytest.mark.parametrize("kind", registry.names())
@pytest.mark.parametrize("order", bs.ORDERS)
def test_round_trip_all_kinds_and_orders(kind, order):
  header = dataclasses.replace(_HEADER, model_kind=kind, order=order, num_steps=255,
                               height=1, width=2**16, alpha=0.1)
  got, payload = bs.unpack(bytearray(bs.pack(header, memoryview(b""))))
  assert payload == b""
  assert got == dataclasses.replace(header, alpha=got.alpha)
  assert got.alpha == pytest.approx(0.1, rel=1e-7)  # Stored as float32.


def test_error_is_value_error():
  assert issubclass(bs.BitstreamError, ValueError)
  assert bs.BitstreamError.__doc__


def test_not_bytes():
  with pytest.raises(TypeError):
    bs.unpack("M2TJ" + "x" * 60)


@pytest.mark.parametrize("data, match", [
    (b"", "truncated"),
    (_craft()[:bs.HEADER_BYTES - 1], "truncated"),
    (_craft(magic=b"\x89PNG"), "not an m2t_jax stream"),
    (_craft(version=bs.FORMAT_VERSION + 1), "newer version"),
    # Version 1 payloads were coded with tables this code does not reproduce;
    # version 2 has no latent checksum.
    (_craft_v2(version=1), "format version 1 by an older m2t_jax"),
    (_craft_v2(version=2), "format version 2 by an older m2t_jax.*checksum"),
    (_craft(version=0), "unsupported format version"),
    (_craft()[:-1] + b"\x00", "corrupted"),
    (_craft(kind=200), "model kind"),
    (_craft(backend=4), "backend"),
    (_craft(order=4), "schedule order"),
    (_craft(steps=0), "num_steps"),
    (_craft(height=0), "height"),
    (_craft(width=2**16 + 1), "width"),
    (_craft(alpha=float("nan")), "alpha"),
    (_craft(alpha=float("inf")), "alpha"),
    (_craft(alpha=0.0), "alpha"),
    (_craft(alpha=-1.0), "alpha"),
    (_craft(extra=b"\x00"), "payload length mismatch"),
    (_craft(schedule=b"\x03\x02\x01\x00"), "size schedule length 3, "),  # 3 of 12 steps
    (_craft(schedule=b"\xff" + bytes(12)), "size schedule length 255, "),
    # n disagrees with the exits present, which are num_steps (4) many: the length
    # byte itself is checked, not only the exits read.
    (_craft(steps=4, payload=b"", schedule=b"\x0a" + bytes(4)), "size schedule length 10, "),
    (_craft(steps=4, payload=b"", schedule=b"\xc8" + bytes(4)), "size schedule length 200, "),
    (_craft(schedule=b"", payload=b""), "truncated"),  # 55 bytes: v6 needs 56
    (_craft(widths=b"\x02"), "unknown step widths byte 2"),
    (_craft(version=4, widths=b"", rate=b"", schedule=b"", payload=b""),
     "truncated"),  # v4: 53
    (_craft(version=5, rate=b"", schedule=b"", payload=b""), "truncated"),  # v5: 54
    (_craft(payload_len=len(_PAYLOAD) + 1), "payload length mismatch"),
])
def test_each_check(data, match):
  with pytest.raises(bs.BitstreamError, match=match):
    bs.unpack(data)


def test_size_schedule_round_trip_and_overhead():
  header = dataclasses.replace(_HEADER, size_schedule=(2,) * 6 + (1,) * 4 + (0, 0))
  data = bs.pack(header, _PAYLOAD)
  assert len(data) == bs.HEADER_BYTES + 12 + len(_PAYLOAD)
  assert data == _craft(schedule=bytes([12, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0]))
  assert bs.unpack(data) == (header, _PAYLOAD)
  assert "exits 2,2,2,2,2,2,1,1,1,1,0,0" in info.describe(header, len(_PAYLOAD))
  widths = dataclasses.replace(_HEADER, size_schedule=(2, 18, 34) + (0,) * 9)
  assert "size schedule: 2:0,2:1,2:2,0:0," in info.describe(widths)


def test_step_widths_round_trip():
  header = dataclasses.replace(_HEADER, step_widths="shared")
  data = bs.pack(header, _PAYLOAD)
  assert data == _craft(widths=b"\x01")
  assert bs.unpack(data) == (header, _PAYLOAD)
  assert "step widths: shared" in info.describe(header)
  assert bs.unpack(bs.pack(_HEADER, _PAYLOAD))[0].step_widths == "exact"


def test_rate_code_round_trip():
  for code in (0, 1234, bs.RATE_CODE_MAX):
    header = dataclasses.replace(_HEADER, rate_code=code)
    data = bs.pack(header, _PAYLOAD)
    assert data == _craft(rate=struct.pack("<H", code))
    assert bs.unpack(data) == (header, _PAYLOAD)
    assert f"(rate code {code}; a variable-rate model)" in info.describe(header)
  assert bs.unpack(_craft())[0].rate_code is None  # 65535: a fixed-rate model
  assert "quality" not in info.describe(_HEADER)
  for bad in (-1, bs.RATE_CODE_MAX + 1, 1.5, True):
    with pytest.raises(ValueError, match="rate_code"):
      bs.pack(dataclasses.replace(_HEADER, rate_code=bad), _PAYLOAD)


def test_version_5_streams_still_read_without_a_rate_code():
  data = _craft(version=5, rate=b"", schedule=b"\x0c" + bytes([1] * 12))
  assert len(data) == 54 + 12 + len(_PAYLOAD)
  header, payload = bs.unpack(data)
  assert header == dataclasses.replace(_HEADER, size_schedule=(1,) * 12)
  assert payload == _PAYLOAD and header.rate_code is None
  assert "(8 payload + 66 header/CRC)" in info.describe(header, len(payload), version=5)


def test_version_4_streams_still_read_as_shared_step_widths():
  # Version 4 is version 5 without the step-widths byte (53 bytes of overhead);
  # every version 4 stream ran its steps at shared widths.
  data = _craft(version=4, widths=b"", rate=b"", schedule=b"\x0c" + bytes([1] * 12))
  assert len(data) == 53 + 12 + len(_PAYLOAD)
  header, payload = bs.unpack(data)
  assert payload == _PAYLOAD
  assert header == dataclasses.replace(_HEADER, step_widths="shared",
                                       size_schedule=(1,) * 12)
  assert "(8 payload + 65 header/CRC)" in info.describe(header, len(payload), version=4)
  assert bs.declared_length(data[:bs.PREFIX_BYTES]) == len(data)


def test_version_3_streams_still_read():
  # Version 3 is version 4 without the size-schedule block (52 bytes of overhead).
  data = _craft(version=3, widths=b"", rate=b"", schedule=b"")
  assert len(data) == 52 + len(_PAYLOAD)
  header, payload = bs.unpack(data)
  assert payload == _PAYLOAD and header.size_schedule == ()
  assert header == dataclasses.replace(_HEADER, step_widths="shared")
  assert "format version 3" in info.describe(header, len(payload), version=3)
  assert "(8 payload + 52 header/CRC)" in info.describe(header, len(payload), version=3)


def test_version_byte_is_believed_only_after_the_crc():
  # A flipped version bit is corruption, not "a newer version: upgrade".
  data = bytearray(bs.pack(_HEADER, _PAYLOAD))
  for bit in range(8):
    flipped = bytearray(data)
    flipped[4] ^= 1 << bit
    with pytest.raises(bs.BitstreamError, match="corrupted stream: CRC32"):
      bs.unpack(bytes(flipped))


def test_writer_fields_default_to_this_process():
  import jax  # noqa: PLC0415
  header = bs.Header("m2t", "qlds", 4, 2.2, 10, 10, bytes(16), 7)
  assert header.backend == jax.default_backend()
  assert header.jax == tuple(int(x) for x in jax.__version__.split(".")[:3])
  got, _ = bs.unpack(bs.pack(header, b""))
  assert (got.backend, got.jax, got.latent_crc) == (header.backend, header.jax, 7)
  assert bs.jax_version("0.4.36.dev20241001") == (0, 4, 36)
  assert bs.jax_version("1.300.2rc1") == (1, 255, 2)


def test_latent_crc_is_crc32_of_int32_little_endian():
  y = np.array([[[1, -2], [3, 2**31 - 1]]], np.int64)
  expected = zlib.crc32(struct.pack("<4i", 1, -2, 3, 2**31 - 1))
  assert bs.latent_crc(y) == expected == bs.latent_crc(y[None])
  assert bs.latent_crc(np.asfortranarray(y)) == expected  # canonical order


def test_every_truncation():
  data = bs.pack(_HEADER, _PAYLOAD)
  for length in range(len(data)):
    with pytest.raises(bs.BitstreamError, match="truncated|corrupted"):
      bs.unpack(data[:length])


def test_trailing_bytes():
  data = bs.pack(_HEADER, _PAYLOAD)
  for extra in [b"\x00", b"\x00" * 4, b"garbage!"]:
    with pytest.raises(bs.BitstreamError, match="extra bytes|trailing"):
      bs.unpack(data + extra)


def test_every_single_bit_flip():
  data = bs.pack(_HEADER, _PAYLOAD)
  for bit in range(8 * len(data)):
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(bs.BitstreamError):
      bs.unpack(bytes(flipped))


@pytest.mark.parametrize("changes, match", [
    ({"model_kind": "vct"}, "model kind"),
    ({"order": "spiral"}, "order"),
    ({"num_steps": 0}, "num_steps"),
    ({"num_steps": 256}, "num_steps"),
    ({"num_steps": 2.0}, "num_steps"),
    ({"height": 0}, "height"),
    ({"width": 2**16 + 1}, "width"),
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"alpha": 1e39}, "alpha"),  # inf in float32.
    ({"alpha": 1e-50}, "alpha"),  # 0 in float32.
    ({"alpha": "2"}, "alpha"),
    ({"fingerprint": b"short"}, "fingerprint"),
    ({"fingerprint": "0123456789abcdef"}, "fingerprint"),
    ({"latent_crc": -1}, "latent_crc"),
    ({"latent_crc": 2**32}, "latent_crc"),
    ({"backend": "cuda"}, "backend"),
    ({"jax": (0, 4, 256)}, "jax"),
    ({"jax": (0, 4)}, "jax"),
    ({"step_widths": "auto"}, "step_widths"),
])
def test_pack_validates(changes, match):
  with pytest.raises(ValueError, match=match):
    bs.pack(dataclasses.replace(_HEADER, **changes), _PAYLOAD)


def test_pack_types():
  with pytest.raises(TypeError):
    bs.pack(_HEADER, "payload")
  with pytest.raises(TypeError):
    bs.pack(dataclasses.asdict(_HEADER), _PAYLOAD)


def test_describe():
  text = info.describe(_HEADER)
  for part in ["m2t", "qlds", "12 steps", "768 x 512", bytes(range(16)).hex(),
               "gpu, JAX 0.4.38", "deadbeef"]:
    assert part in text
  text = info.describe(_HEADER, payload_bytes=1000)
  assert "1056 (1000 payload + 56 header/CRC)" in text
  assert f"{8 * 1056 / (512 * 768):.4f} bits per pixel (per latent cell" in text
  assert "pixels, or latent cells" in text


def test_declared_length():
  data = bs.pack(dataclasses.replace(_HEADER, size_schedule=(1,) * 12), _PAYLOAD)
  assert bs.declared_length(data[:bs.PREFIX_BYTES]) == len(data) == 56 + 12 + 8
  v3 = _craft(version=3, widths=b"", rate=b"", schedule=b"")
  assert bs.declared_length(v3[:bs.PREFIX_BYTES]) == 52 + 8
  assert bs.declared_length(_craft(version=4, widths=b"", rate=b"")[:bs.PREFIX_BYTES]) == 53 + 8
  assert bs.declared_length(_craft(version=5, rate=b"")[:bs.PREFIX_BYTES]) == 54 + 8
  assert bs.declared_length(data[:bs.PREFIX_BYTES - 1]) is None  # too short to tell
  assert bs.declared_length(_craft_v2()) is None  # a layout it does not parse
  assert bs.declared_length(b"\x89PNG" + bytes(60)) is None
