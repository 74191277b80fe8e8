"""Container format for one compressed image (format version 2).

Every multi-byte field is little-endian. Offsets are in bytes; L is the payload
length.

| offset | size | type    | field                                               |
|-------:|-----:|---------|-----------------------------------------------------|
|      0 |    4 | bytes   | magic ``b"M2TJ"``                                   |
|      4 |    1 | u8      | format version (2)                                  |
|      5 |    1 | u8      | model kind: its registry code (0 = mt, 1 = m2t)     |
|      6 |    1 | u8      | schedule order: 0 = qlds, 1 = random, 2 = raster,   |
|        |      |         | 3 = entropy                                         |
|      7 |    1 | u8      | number of decode steps, 1..255                      |
|      8 |    4 | f32     | schedule alpha (finite, > 0)                        |
|     12 |    4 | u32     | image height in pixels, 1..65536                    |
|     16 |    4 | u32     | image width in pixels, 1..65536                     |
|     20 |   16 | bytes   | model fingerprint (opaque digest from the caller)   |
|     36 |    4 | u32     | payload length L                                    |
|     40 |    L | bytes   | payload (range coder words)                         |
|   40+L |    4 | u32     | CRC32 (zlib) of bytes [0, 40+L)                     |

The fixed overhead is ``HEADER_BYTES`` = 44 bytes (the 40-byte header plus the
CRC). The image size is the original, uncropped one, so the decoder can pad and
crop exactly as the encoder did. The fingerprint lets the decoder refuse a stream
written by a different model instead of decoding garbage.

``unpack`` checks, in this order, and raises ``BitstreamError`` with a specific
message at the first failure: length at least ``HEADER_BYTES`` (truncated), magic
(not an m2t_jax stream), version (written by a newer version), CRC (corrupted),
field values, and payload length against the total size (truncated or trailing
bytes). A single flipped bit anywhere is always detected: in the magic or version
by those checks, elsewhere by the CRC.

The version covers the payload as well: a range-coded payload decodes only with
tables bit-identical to the encoder's, so a change in how the tables are computed
is a new version. Version 1 (the same layout) was written before
``gmm.coding_tables`` became elementwise; its wide tables can differ from today's
by one float32 ULP in ~20% of entries, which could decode wrongly, so version 1
streams are refused with a message saying so rather than decoded.
"""

import dataclasses
import math
import numbers
import struct
import zlib

from m2t_jax.entropy import registry

MAGIC = b"M2TJ"
FORMAT_VERSION = 2
ORDERS = ("qlds", "random", "raster", "entropy")  # Index = stored byte.
MAX_IMAGE_SIDE = 2**16
FINGERPRINT_BYTES = 16

_HEADER = struct.Struct("<4sBBBBfII16sI")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _CRC.size  # 44: bytes of a stream besides the payload.
_MAX_PAYLOAD = 2**32 - 1


class BitstreamError(ValueError):
  """Raised for every malformed, truncated, corrupted or foreign stream.

  The message says which check failed (truncated, not an m2t_jax stream, newer
  format version, CRC mismatch, invalid header field, payload size mismatch).
  """


@dataclasses.dataclass(frozen=True)
class Header:
  """What a decoder needs besides the payload.

  Attributes:
    model_kind: a registered kind (``entropy/registry.py``), e.g. "mt" or "m2t".
    order: schedule order, one of "qlds", "random", "raster", "entropy".
    num_steps: number of decode steps, 1..255.
    alpha: schedule parameter; stored as float32, so ``unpack`` returns the
      float32-rounded value.
    height: image height in pixels, 1..65536.
    width: image width in pixels, 1..65536.
    fingerprint: 16 bytes identifying the model weights and config.
  """
  model_kind: str
  order: str
  num_steps: int
  alpha: float
  height: int
  width: int
  fingerprint: bytes


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
      header.height, header.width, header.fingerprint, len(payload)) + payload
  return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> tuple[Header, bytes]:
  """Parses and checks a stream written by ``pack``.

  Args:
    data: the whole stream, bytes-like.

  Returns:
    (header, payload bytes).

  Raises:
    TypeError: ``data`` is not bytes-like.
    BitstreamError: the stream is truncated, foreign, from a newer format
      version, corrupted, or has invalid fields or trailing bytes.
  """
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f"stream must be bytes, got {type(data).__name__}")
  data = bytes(data)
  if len(data) < HEADER_BYTES:
    raise BitstreamError(
        f"truncated stream: {len(data)} bytes, but every m2t_jax stream has at "
        f"least {HEADER_BYTES}; the file was cut short or is empty")
  if data[:4] != MAGIC:
    raise BitstreamError(
        f"not an m2t_jax stream: starts with {data[:4]!r}, expected {MAGIC!r}")
  (_, version, kind, order, num_steps, alpha, height, width, fingerprint,
   payload_len) = _HEADER.unpack_from(data)
  if version > FORMAT_VERSION:
    raise BitstreamError(
        f"stream written by a newer version of m2t_jax (format version {version}, "
        f"this one reads {FORMAT_VERSION}); upgrade m2t_jax to decode it")
  if version == 1:
    raise BitstreamError(
        "stream written in format version 1 by an older m2t_jax, whose coding "
        "tables this version does not reproduce bit for bit; decode it with "
        "m2t_jax before 2026-11-21 (git history) or compress the image again")
  if version != FORMAT_VERSION:
    raise BitstreamError(
        f"unsupported format version {version} (this m2t_jax reads "
        f"{FORMAT_VERSION}); the stream is corrupted")
  body, (crc,) = data[:-_CRC.size], _CRC.unpack_from(data, len(data) - _CRC.size)
  if zlib.crc32(body) != crc:
    # Fields are untrusted here; the length is only a hint for the message.
    expected = HEADER_BYTES + payload_len
    hint = ("" if expected == len(data) else
            f"; the header declares {expected} bytes in all but the stream has "
            f"{len(data)}, so it may be truncated or have extra bytes appended")
    raise BitstreamError(f"corrupted stream: CRC32 mismatch{hint}")
  kind_entry = registry.by_code(kind)
  if kind_entry is None:
    raise BitstreamError(f"invalid header: unknown model kind byte {kind} (this "
                         f"m2t_jax knows {registry.names()})")
  if order >= len(ORDERS):
    raise BitstreamError(f"invalid header: unknown schedule order byte {order}")
  header = Header(model_kind=kind_entry.name, order=ORDERS[order],
                  num_steps=num_steps, alpha=alpha, height=height, width=width,
                  fingerprint=fingerprint)
  problem = _header_problem(header)
  if problem:
    raise BitstreamError(f"invalid header: {problem}")
  if HEADER_BYTES + payload_len != len(data):
    raise BitstreamError(
        f"payload length mismatch: the header declares {payload_len} payload bytes "
        f"({HEADER_BYTES + payload_len} in all) but the stream has {len(data)} "
        "bytes; it is truncated or has trailing bytes")
  return header, data[_HEADER.size:_HEADER.size + payload_len]


def describe(header: Header, payload_bytes: int | None = None) -> str:
  """Multi-line human-readable summary of a header, for ``m2t info``.

  Args:
    header: as returned by ``unpack``.
    payload_bytes: optional payload length; if given, sizes and the bits per
      pixel of the whole stream (header and CRC included) are added.
  """
  lines = [
      f"m2t_jax stream, format version {FORMAT_VERSION}",
      f"  model:       {header.model_kind}",
      f"  fingerprint: {header.fingerprint.hex()}",
      f"  image:       {header.width} x {header.height} pixels (width x height)",
      f"  schedule:    {header.order}, {header.num_steps} steps, "
      f"alpha {header.alpha:g}",
  ]
  if payload_bytes is not None:
    total = HEADER_BYTES + payload_bytes
    bpp = 8 * total / (header.height * header.width)
    lines.append(f"  size:        {total} bytes ({payload_bytes} payload + "
                 f"{HEADER_BYTES} header/CRC), {bpp:.4f} bpp")
  return "\n".join(lines)
