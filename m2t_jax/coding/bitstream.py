"""Container format for one compressed image or latent (format version 6).

Every multi-byte field is little-endian. Offsets are in bytes; L is the payload
length.

| offset | size | type    | field                                               |
|-------:|-----:|---------|-----------------------------------------------------|
|      0 |    4 | bytes   | magic ``b"M2TJ"``                                   |
|      4 |    1 | u8      | format version (6)                                  |
|      5 |    1 | u8      | model kind: its registry code (0 = mt, 1 = m2t)     |
|      6 |    1 | u8      | schedule order: 0 = qlds, 1 = random, 2 = raster,   |
|        |      |         | 3 = entropy                                         |
|      7 |    1 | u8      | number of decode steps, 1..255                      |
|      8 |    4 | f32     | schedule alpha (finite, > 0)                        |
|     12 |    4 | u32     | height, 1..65536 (image pixels; latent cells for an |
|     16 |    4 | u32     | width     EntropyCoder stream)                      |
|     20 |   16 | bytes   | model fingerprint (opaque digest from the caller)   |
|     36 |    4 | u32     | CRC32 (zlib) of the decoded latent: int32 little-   |
|        |      |         | endian values in (h, w, C) row-major order          |
|     40 |    1 | u8      | backend that wrote it: 0 other, 1 cpu, 2 gpu, 3 tpu |
|     41 |    3 | 3 x u8  | JAX version that wrote it (major, minor, micro)     |
|     44 |    4 | u32     | payload length L                                    |
|     48 |    1 | u8      | step widths: 0 = exact, 1 = shared (padded widths)  |
|     49 |    2 | u16     | rate code: 65535 = a fixed-rate model; 0..65534 =   |
|        |      |         | the rate level code / 65534 of a variable-rate one  |
|     51 |    1 | u8      | size schedule length n: 0, or the number of steps   |
|     52 |    n | n x u8  | size schedule: the model exit of each decode step   |
|        |      |         | (nested models, ``entropy/nested.py``)              |
|   52+n |    L | bytes   | payload (range coder words)                         |
| 52+n+L |    4 | u32     | CRC32 (zlib) of bytes [0, 52+n+L)                   |

The fixed overhead is ``HEADER_BYTES`` = 56 bytes (the 52-byte header plus the
CRC) and one byte per step of a size schedule. Versions 3 to 5 are still read
(``READABLE_VERSIONS``; ``OVERHEAD_BYTES`` per version). Two checksums for two
failures: the trailing CRC catches damaged bytes, the latent CRC a decode whose
tables differed from the encoder's (another backend or XLA version), which
raises ``DecodeMismatchError``. ``unpack`` checks length, magic, CRC, version,
fields and payload length, in that order, and raises ``BitstreamError`` at the
first failure; the decoder then checks the fields against its model
(``EntropyCoder.unpack``). docs/bitstream.md explains each field, the rate code
and step widths, the order of the checks and the older versions.
"""

import dataclasses
import math
import numbers
import re
import struct
import zlib

import jax
import numpy as np

from m2t_jax.coding.stream_errors import (  # noqa: F401  (re-exported: bitstream.X)
    BitstreamError,
    DecodeMismatchError,
    StreamTooLargeError,
    check_size,
)
from m2t_jax.entropy import registry

MAGIC = b"M2TJ"
FORMAT_VERSION = 6
READABLE_VERSIONS = (3, 4, 5, 6)
ORDERS = ("qlds", "random", "raster", "entropy")  # Index = stored byte.
BACKENDS = ("other", "cpu", "gpu", "tpu")  # Index = stored byte.
STEP_WIDTHS = ("exact", "shared")  # Index = stored byte.
MAX_IMAGE_SIDE = 2**16
FINGERPRINT_BYTES = 16
# Default limit on the pixels a decoder accepts from a header before allocating
# anything: Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, 1 GiB of
# 24-bit pixels / 4 / 3 = 89,478,485, e.g. 11000 x 8000). ``Codec.max_pixels`` /
# ``m2t decompress --max-pixels`` raise it for streams one trusts.
DEFAULT_MAX_PIXELS = 89_478_485

_HEADER = struct.Struct("<4sBBBBfII16sIB3BI")  # bytes 0..47, versions 3 to 5
_CRC = struct.Struct("<I")
_RATE = struct.Struct("<H")
# The rate code of a stream of a fixed-rate model; codes 0..RATE_CODE_MAX are
# rate levels code / RATE_CODE_MAX.
NO_RATE_CODE = 65535
RATE_CODE_MAX = 65534
# Bytes between the fixed header (48) and the size schedule's length byte, per
# version: v5 the step-widths byte, v6 it and the rate code.
_EXTRA_BYTES = {3: 0, 4: 0, 5: 1, 6: 3}
# 56: bytes of a version 6 stream besides the payload (and its size schedule).
HEADER_BYTES = _HEADER.size + 4 + _CRC.size
V5_HEADER_BYTES = _HEADER.size + 2 + _CRC.size  # 54
V4_HEADER_BYTES = _HEADER.size + 1 + _CRC.size  # 53
V3_HEADER_BYTES = _HEADER.size + _CRC.size  # 52
OVERHEAD_BYTES = {3: V3_HEADER_BYTES, 4: V4_HEADER_BYTES, 5: V5_HEADER_BYTES,
                  6: HEADER_BYTES}
_MAX_PAYLOAD = 2**32 - 1
PREFIX_BYTES = _HEADER.size + 4  # what ``declared_length`` reads: up to byte 51


def latent_crc(y_hat) -> int:
  """CRC32 of an integer latent in the container's canonical form: int32
  little-endian values in row-major order of (h, w, C) (a leading batch axis of
  1 is the same bytes)."""
  return zlib.crc32(np.ascontiguousarray(np.asarray(y_hat), dtype="<i4").tobytes())


def this_writer() -> tuple[str, tuple[int, int, int]]:
  """(backend, JAX version) of this process, as a stream records them."""
  backend = jax.default_backend()
  return (backend if backend in BACKENDS else "other"), jax_version(jax.__version__)


def jax_version(text: str) -> tuple[int, int, int]:
  """'0.10.2' or '0.4.36.dev20241001' -> (0, 10, 2) / (0, 4, 36): the leading
  digits of the first three parts, each clipped to 0..255 (a u8)."""
  parts = [re.match(r"\d*", part).group() or "0" for part in text.split(".")[:3]]
  parts = [min(int(p[:4]), 255) for p in parts]
  return tuple(parts + [0] * (3 - len(parts)))


def _default_backend() -> str:
  return this_writer()[0]


def _default_jax() -> tuple[int, int, int]:
  return this_writer()[1]


@dataclasses.dataclass(frozen=True)
class Header:
  """What a decoder needs besides the payload.

  Attributes:
    model_kind: a registered kind (``entropy/registry.py``), e.g. "mt" or "m2t".
    order: schedule order, one of "qlds", "random", "raster", "entropy".
    num_steps: number of decode steps, 1..255.
    alpha: schedule parameter; stored as float32, so ``unpack`` returns the
      float32-rounded value.
    height: image height in pixels (latent cells for a latent stream), 1..65536.
    width: image width, likewise.
    fingerprint: 16 bytes identifying the model (``coding/fingerprint.py``).
    latent_crc: ``latent_crc`` of the latent the payload holds, 0..2**32-1.
    backend: the backend of the writer, one of ``BACKENDS`` (default: this
      process's).
    jax: the JAX version of the writer, (major, minor, micro) each 0..255
      (default: this process's).
    size_schedule: the exit of each decode step (each 0..255), or () for a
      model with one size; the decoding model checks that it can run it.
    step_widths: how the encoder ran the decode steps, one of ``STEP_WIDTHS``
      (versions 3 and 4: always "shared").
    rate_code: the rate level code (0..``RATE_CODE_MAX``) of a variable-rate
      model, or None for a fixed-rate one (versions 3 to 5: always None).
  """
  model_kind: str
  order: str
  num_steps: int
  alpha: float
  height: int
  width: int
  fingerprint: bytes
  latent_crc: int
  backend: str = dataclasses.field(default_factory=_default_backend)
  jax: tuple = dataclasses.field(default_factory=_default_jax)
  size_schedule: tuple = ()
  step_widths: str = "exact"
  rate_code: int | None = None

  @property
  def writer(self) -> str:
    """'cpu, JAX 0.10.2': who wrote the stream, for messages."""
    return describe_writer(self.backend, self.jax)


def describe_writer(backend: str, version: tuple) -> str:
  """('cpu', (0, 10, 2)) -> 'cpu, JAX 0.10.2'; ``describe_writer(*this_writer())``
  names this process."""
  return f"{backend}, JAX {'.'.join(map(str, version))}"


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _header_problem(header: Header) -> str | None:
  """Why ``header`` cannot be stored, or None if it can."""
  if header.model_kind not in registry.names():
    return (f"unknown model kind {header.model_kind!r}; expected one of "
            f"{registry.names()}")
  if header.order not in ORDERS:
    return f"unknown schedule order {header.order!r}; expected one of {ORDERS}"
  if not _is_int(header.num_steps) or not 1 <= header.num_steps <= 255:
    return f"num_steps must be an integer in [1, 255], got {header.num_steps!r}"
  for name in ("height", "width"):
    side = getattr(header, name)
    if not _is_int(side) or not 1 <= side <= MAX_IMAGE_SIDE:
      return f"{name} must be an integer in [1, {MAX_IMAGE_SIDE}], got {side!r}"
  if not isinstance(header.alpha, numbers.Real) or isinstance(header.alpha, bool):
    return f"alpha must be a real number, got {header.alpha!r}"
  # Checked after rounding to float32, the stored precision: 1e39 becomes inf and
  # 1e-50 becomes 0.
  try:
    stored = struct.unpack("<f", struct.pack("<f", float(header.alpha)))[0]
  except OverflowError:
    stored = math.inf
  if not (math.isfinite(stored) and stored > 0):
    return f"alpha must be finite and > 0 in float32, got {header.alpha!r}"
  if (not isinstance(header.fingerprint, bytes)
      or len(header.fingerprint) != FINGERPRINT_BYTES):
    return (f"fingerprint must be exactly {FINGERPRINT_BYTES} bytes, got "
            f"{header.fingerprint!r}")
  if not _is_int(header.latent_crc) or not 0 <= header.latent_crc < 2**32:
    return f"latent_crc must be an integer in [0, 2**32), got {header.latent_crc!r}"
  if header.backend not in BACKENDS:
    return f"unknown backend {header.backend!r}; expected one of {BACKENDS}"
  if (not isinstance(header.jax, tuple) or len(header.jax) != 3
      or not all(_is_int(x) and 0 <= x <= 255 for x in header.jax)):
    return f"jax must be 3 integers in [0, 255], got {header.jax!r}"
  if header.step_widths not in STEP_WIDTHS:
    return f"step_widths must be one of {STEP_WIDTHS}, got {header.step_widths!r}"
  if header.rate_code is not None and (
      not _is_int(header.rate_code) or not 0 <= header.rate_code <= RATE_CODE_MAX):
    return (f"rate_code must be None or an integer in [0, {RATE_CODE_MAX}], got "
            f"{header.rate_code!r}")
  schedule = header.size_schedule
  if (not isinstance(schedule, tuple) or len(schedule) not in (0, header.num_steps)
      or not all(_is_int(x) and 0 <= x <= 255 for x in schedule)):
    return (f"size_schedule must be () or {header.num_steps} (num_steps) integers in "
            f"[0, 255], got {schedule!r}")
  return None


def pack(header: Header, payload: bytes) -> bytes:
  """Serialises ``header`` and ``payload`` into one stream (see the layout above).

  Args:
    header: a valid Header.
    payload: bytes-like, at most 2**32 - 1 bytes.

  Returns:
    ``HEADER_BYTES + len(payload)`` bytes.

  Raises:
    TypeError: ``header`` is not a Header or ``payload`` not bytes-like.
    ValueError: a header field cannot be stored.
  """
  if not isinstance(header, Header):
    raise TypeError(f"header must be a Header, got {type(header).__name__}")
  if not isinstance(payload, (bytes, bytearray, memoryview)):
    raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
  payload = bytes(payload)
  problem = _header_problem(header)
  if problem:
    raise ValueError(f"cannot pack header: {problem}")
  if len(payload) > _MAX_PAYLOAD:
    raise ValueError(f"payload of {len(payload)} bytes exceeds the u32 length field")
  body = _HEADER.pack(
      MAGIC, FORMAT_VERSION, registry.get(header.model_kind).code,
      ORDERS.index(header.order), header.num_steps, float(header.alpha),
      header.height, header.width, header.fingerprint, header.latent_crc,
      BACKENDS.index(header.backend), *header.jax, len(payload))
  rate_code = NO_RATE_CODE if header.rate_code is None else header.rate_code
  body += (bytes([STEP_WIDTHS.index(header.step_widths)]) + _RATE.pack(rate_code)
           + bytes([len(header.size_schedule), *header.size_schedule]) + payload)
  return body + _CRC.pack(zlib.crc32(body))


def declared_length(prefix: bytes) -> int | None:
  """Bytes in all that a version 3 to 6 stream starting with ``prefix`` declares
  (from its payload length and size schedule length; untrusted until ``unpack``
  checks them), or None if ``prefix`` (at least ``PREFIX_BYTES`` long) starts no
  such stream. File readers read no further than this (and one byte more, to see
  trailing bytes): a file that is no stream then costs ``PREFIX_BYTES``."""
  if len(prefix) < PREFIX_BYTES or prefix[:4] != MAGIC or prefix[4] not in READABLE_VERSIONS:
    return None
  version = prefix[4]
  length = V3_HEADER_BYTES + _HEADER.unpack_from(prefix)[-1]
  if version == 3:
    return length
  at = _HEADER.size + _EXTRA_BYTES[version]  # the schedule length byte
  return length + _EXTRA_BYTES[version] + 1 + prefix[at]


def unpack(data: bytes) -> tuple[Header, bytes]:
  """Parses and checks a stream written by ``pack``.

  Args:
    data: the whole stream, bytes-like.

  Returns:
    (header, payload bytes).

  Raises:
    TypeError: ``data`` is not bytes-like.
    BitstreamError: the stream is truncated, foreign, corrupted, from a newer or
      an unreadable older format version, or has invalid fields or trailing
      bytes.
  """
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f"stream must be bytes, got {type(data).__name__}")
  data = bytes(data)
  if len(data) < 4 or data[:4] != MAGIC:
    if len(data) < 4 and MAGIC.startswith(data):
      raise BitstreamError(
          f"truncated stream: {len(data)} bytes, but every m2t_jax stream has at "
          f"least {HEADER_BYTES}; the file was cut short or is empty")
    raise BitstreamError(
        f"not an m2t_jax stream: starts with {data[:4]!r}, expected {MAGIC!r}")
  if len(data) < HEADER_BYTES - 8:  # The shortest header of any version (v1, v2).
    raise BitstreamError(
        f"truncated stream: {len(data)} bytes, but every m2t_jax stream has at "
        f"least {HEADER_BYTES}; the file was cut short or is empty")
  # Every version ends with the CRC of all bytes before it: check it before
  # believing any field, the version included.
  body, (crc,) = data[:-_CRC.size], _CRC.unpack_from(data, len(data) - _CRC.size)
  if zlib.crc32(body) != crc:
    if len(data) < HEADER_BYTES:
      raise BitstreamError(
          f"truncated stream: {len(data)} bytes, but every m2t_jax stream has at "
          f"least {HEADER_BYTES}; the file was cut short (or is corrupted)")
    hint = ""
    if len(data) >= HEADER_BYTES and data[4] in READABLE_VERSIONS:
      # Fields are untrusted here; the length is only a hint for the message.
      expected = declared_length(data)
      if expected != len(data):
        hint = (f"; the header declares {expected} bytes in all but the stream has "
                f"{len(data)}, so it may be truncated or have extra bytes appended")
    raise BitstreamError(f"corrupted stream: CRC32 mismatch{hint}")
  version = data[4]
  if version > FORMAT_VERSION:
    raise BitstreamError(
        f"stream written by a newer version of m2t_jax (format version {version}, "
        f"this one reads {FORMAT_VERSION}); upgrade m2t_jax to decode it")
  if version in (1, 2):
    why = ("whose coding tables this version does not reproduce bit for bit"
           if version == 1 else "without the decoded-latent checksum this version "
           "requires (a wrong decode would go unnoticed)")
    last = "before 2026-11-21" if version == 1 else "at git commit 5abe423"
    raise BitstreamError(
        f"stream written in format version {version} by an older m2t_jax, {why}; "
        f"decode it with m2t_jax {last} (git history), or compress the image again")
  if version not in READABLE_VERSIONS:
    raise BitstreamError(
        f"unsupported format version {version} (this m2t_jax reads "
        f"{READABLE_VERSIONS}); the stream is corrupted")
  overhead = OVERHEAD_BYTES[version]
  if len(data) < overhead:
    raise BitstreamError(
        f"truncated stream: {len(data)} bytes, but every m2t_jax stream has at "
        f"least {HEADER_BYTES}; the file was cut short or is empty")
  (_, _, kind, order, num_steps, alpha, height, width, fingerprint, crc_latent,
   backend, jax_major, jax_minor, jax_micro, payload_len) = _HEADER.unpack_from(data)
  kind_entry = registry.by_code(kind)
  if kind_entry is None:
    raise BitstreamError(f"invalid header: unknown model kind byte {kind} (this "
                         f"m2t_jax knows {registry.names()})")
  if order >= len(ORDERS):
    raise BitstreamError(f"invalid header: unknown schedule order byte {order}")
  if backend >= len(BACKENDS):
    raise BitstreamError(f"invalid header: unknown backend byte {backend}")
  schedule, widths, rate_code, at = (), "shared", None, _HEADER.size
  if version >= 5:  # the step-widths byte
    if data[at] >= len(STEP_WIDTHS):
      raise BitstreamError(f"invalid header: unknown step widths byte {data[at]}")
    widths, at = STEP_WIDTHS[data[at]], at + 1
  if version >= 6:  # the rate code
    (code,) = _RATE.unpack_from(data, at)
    rate_code, at = (None if code == NO_RATE_CODE else code), at + _RATE.size
  if version >= 4:  # n, then n exits
    n = data[at]
    if n not in (0, num_steps):
      raise BitstreamError(f"invalid header: size schedule length {n}, expected 0 "
                           f"or num_steps ({num_steps})")
    start = at + 1
    schedule = tuple(data[start:min(start + n, len(data) - _CRC.size)])
    overhead += n  # a short schedule then fails the length check below
  header = Header(model_kind=kind_entry.name, order=ORDERS[order],
                  num_steps=num_steps, alpha=alpha, height=height, width=width,
                  fingerprint=fingerprint, latent_crc=crc_latent,
                  backend=BACKENDS[backend], jax=(jax_major, jax_minor, jax_micro),
                  size_schedule=schedule, step_widths=widths, rate_code=rate_code)
  problem = _header_problem(header)
  if problem:
    raise BitstreamError(f"invalid header: {problem}")
  if overhead + payload_len != len(data):
    raise BitstreamError(
        f"payload length mismatch: the header declares {payload_len} payload bytes "
        f"({overhead + payload_len} in all) but the stream has {len(data)} "
        "bytes; it is truncated or has trailing bytes")
  start = overhead - _CRC.size
  return header, data[start:start + payload_len]

