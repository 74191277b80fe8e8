"""Range coding of one decode group at a time, with constriction's queue coder.

The tables come from ``entropy.gmm.coding_tables``: for element i, ``centers[i]``
(int32) and ``pmf[i]`` (float, length n = 2R+2). Symbol j in [0, 2R] stands for the
integer ``centers[i] - R + j``; symbol 2R+1 is the ESCAPE, used for every value
outside the window [center - R, center + R].

Coding a group (the decoder mirrors each step, in the same order):
  1. One batched call codes the N window/escape symbols with
     ``Categorical(perfect=False)`` and the per-element (N, 2R+2) tables.
  2. If E > 0 elements escaped, their offsets d = value - center (|d| > R) are
     coded losslessly with a fixed, model-free scheme, in two batched calls:
       a. E length classes, one per escape, Uniform over 32 classes (5 bits):
          m = |d| - R >= 1 and k = bit_length(m) in [1, 32]; the class is k - 1.
       b. For each escape in element order: the sign of d (1 bit), then the
          k - 1 bits of m below its leading one (which is implicit), as at most
          two Uniform chunks (k-17 high bits when k > 17, then <= 16 low bits;
          chunks stay <= 16 bits because constriction's Uniform is limited to
          sizes below 2**24). Chunks of 0 bits are left out.
     Cost of one escape beyond -log2 p(ESCAPE): exactly 5 + 1 + (k - 1) = k + 5
     bits, k = bit_length(|d| - R) <= 32, i.e. at most 37 bits. All Uniform sizes
     are powers of two, which constriction's 24-bit fixed point represents
     exactly, so there is no rounding loss (``tests/test_range_coder.py``
     checks the cost of escapes). Any int32 value
     round-trips whatever its (int32) centre.

The compressed data is a sequence of uint32 words; on the wire they are
little-endian (``finish`` / ``new_decoder``). Several groups can be coded in
sequence on one encoder: the queue coder is first-in first-out, so the decoder
decodes them in the same order with the same tables.

Determinism: ``Categorical(perfect=False)`` quantises each float table to fixed
point deterministically, but tables that differ by even 1 ULP may quantise
differently and then decoding goes wrong silently. The caller must therefore give
encoder and decoder bit-identical tables (docs/architecture.md). Here,
tables are converted to C-contiguous float64 on both sides: the conversion of
float32 is exact, and constriction 0.5 silently misreads Fortran-ordered 2-D
arrays (they code differently from the same table in C order), so contiguity is
not optional.

Garbage in: decoding invalid data never hangs; constriction either raises (wrapped
here into ``RangeCoderError``) or returns valid-looking symbols. Escaped values
that decode to something outside int32 raise ``RangeCoderError``.
"""

import constriction
import numpy as np

# constriction.stream is an attribute of the compiled extension, not an importable
# submodule, so `from constriction.stream import ...` fails.
cmodel = constriction.stream.model
cqueue = constriction.stream.queue

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
# Length classes of the escape magnitude m = |d| - R: m < 2**32, so bit_length(m)
# is in [1, 32].
_NUM_LENGTH_CLASSES = 32
# Widest Uniform chunk used for escape mantissa bits.
_CHUNK_BITS = 16

# Stateless model objects, shared: the length class model and the family of
# per-symbol Uniform models (sizes passed per call).
_LENGTH_MODEL = cmodel.Uniform(_NUM_LENGTH_CLASSES)
_UNIFORM_FAMILY = cmodel.Uniform()
_CATEGORICAL_FAMILY = cmodel.Categorical(perfect=False)


class RangeCoderError(ValueError):
  """Compressed data that cannot be decoded: bad length, invalid or corrupted data."""


def new_encoder() -> cqueue.RangeEncoder:
  """A fresh, empty queue (first-in first-out) range encoder."""
  return cqueue.RangeEncoder()


def finish(encoder: cqueue.RangeEncoder) -> bytes:
  """The encoder's compressed data as little-endian uint32 words (4*W bytes)."""
  return encoder.get_compressed().astype("<u4").tobytes()


def new_decoder(data: bytes) -> cqueue.RangeDecoder:
  """A range decoder over ``data``, little-endian uint32 words as from ``finish``.

  Raises:
    TypeError: ``data`` is not bytes-like.
    RangeCoderError: the length of ``data`` is not a multiple of 4 bytes.
  """
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f"compressed data must be bytes, got {type(data).__name__}")
  data = bytes(data)
  if len(data) % 4:
    raise RangeCoderError(
        f"range coder payload has {len(data)} bytes, not a whole number of 32-bit "
        "words: the data is truncated or corrupted")
  words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
  return cqueue.RangeDecoder(words)


def _check_int_array(name: str, a: np.ndarray) -> np.ndarray:
  """1-D integer array within int32, returned as int64 (room for offsets)."""
  a = np.asarray(a)
  if a.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
  if a.dtype.kind not in "iu":
    raise ValueError(f"{name} must have an integer dtype, got {a.dtype}")
  a = a.astype(np.int64)
  if a.size and (a.min() < _INT32_MIN or a.max() > _INT32_MAX):
    raise ValueError(f"{name} must lie in the int32 range [-2**31, 2**31 - 1]; got "
                     f"values in [{a.min()}, {a.max()}]")
  return a


def _check_tables(centers, pmf) -> tuple[np.ndarray, np.ndarray, int]:
  """Validated (centers int64 (N,), pmf C-contiguous float64 (N, n), radius R)."""
  centers = _check_int_array("centers", centers)
  pmf = np.asarray(pmf)
  if pmf.ndim != 2:
    raise ValueError(f"pmf must be 2-D (N, 2R+2), got shape {pmf.shape}")
  if pmf.dtype.kind != "f":
    raise ValueError(f"pmf must have a float dtype, got {pmf.dtype}")
  n, width = pmf.shape
  if n != centers.shape[0]:
    raise ValueError(f"pmf has {n} rows but there are {centers.shape[0]} centers")
  if width < 2 or width % 2:
    raise ValueError(f"pmf rows must have even length 2R+2 >= 2, got {width}")
  # float32 -> float64 is exact; contiguity matters (see module docstring).
  pmf = np.ascontiguousarray(pmf, dtype=np.float64)
  if not np.all(np.isfinite(pmf)) or np.any(pmf < 0):
    raise ValueError("pmf must be finite and non-negative")
  if n and np.any(pmf.sum(axis=1) <= 0):
    raise ValueError("every pmf row needs a positive sum")
  return centers, pmf, (width - 2) // 2


def _bit_length(m: np.ndarray) -> np.ndarray:
  """Bit length of each int64 m in [1, 2**32), as int64."""
  return np.sum((m[:, None] >> np.arange(33)) > 0, axis=1).astype(np.int64)


def _payload_layout(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Uniform sizes of the escape payload for bit lengths k (E,) of m.

  Each escape has three slots: sign (2), high chunk (2**(k-17) when k > 17),
  low chunk (2**min(k-1, 16) when k > 1). Returns (sizes (E, 3) int64, used (E, 3)
  bool); the payload is sizes[used] in row-major order.
  """
  mantissa_bits = lengths - 1
  high_bits = np.maximum(mantissa_bits - _CHUNK_BITS, 0)
  low_bits = np.minimum(mantissa_bits, _CHUNK_BITS)
  bits = np.stack([np.ones_like(lengths), high_bits, low_bits], axis=1)
  return np.left_shift(1, bits), bits > 0


def encode_group(encoder: cqueue.RangeEncoder, values: np.ndarray,
                 centers: np.ndarray, pmf: np.ndarray) -> None:
  """Appends one group of N values to ``encoder``.

  Args:
    encoder: from ``new_encoder``.
    values: (N,) integers in the int32 range: the symbols to code.
    centers: (N,) int32 window centres from ``gmm.coding_tables``.
    pmf: (N, 2R+2) float tables from ``gmm.coding_tables``; rows need not sum to 1.

  Raises:
    ValueError: shapes, dtypes or ranges of the inputs are wrong.
  """
  centers, pmf, radius = _check_tables(centers, pmf)
  values = _check_int_array("values", values)
  if values.shape != centers.shape:
    raise ValueError(f"values has shape {values.shape} but centers {centers.shape}")
  if not values.size:
    return
  offsets = values - centers  # int64: |offset| < 2**32.
  escaped = np.abs(offsets) > radius
  symbols = np.where(escaped, 2 * radius + 1, offsets + radius).astype(np.int32)
  try:
    encoder.encode(symbols, _CATEGORICAL_FAMILY, pmf)
    if not escaped.any():
      return
    d = offsets[escaped]
    m = np.abs(d) - radius  # >= 1, < 2**32.
    lengths = _bit_length(m)
    encoder.encode((lengths - 1).astype(np.int32), _LENGTH_MODEL)
    sizes, used = _payload_layout(lengths)
    mantissa = m - np.left_shift(1, lengths - 1)  # m without its leading one.
    # When k - 1 <= 16 the high chunk is 0 and unused, the low one is all of it.
    slots = np.stack([(d < 0).astype(np.int64), mantissa >> _CHUNK_BITS,
                      mantissa & ((1 << _CHUNK_BITS) - 1)], axis=1)
    encoder.encode(slots[used].astype(np.int32), _UNIFORM_FAMILY,
                   sizes[used].astype(np.int32))
  except Exception as e:  # Inputs are validated: this would be a bug here.
    raise RangeCoderError(f"range encoding failed: {e}") from e


def decode_group(decoder: cqueue.RangeDecoder, centers: np.ndarray,
                 pmf: np.ndarray) -> np.ndarray:
  """Decodes one group of N values, mirroring ``encode_group``.

  Args:
    decoder: from ``new_decoder``; earlier groups must have been decoded already.
    centers: (N,) int32, bit-identical to the encoder's.
    pmf: (N, 2R+2) float, bit-identical to the encoder's.

  Returns:
    (N,) int32 decoded values.

  Raises:
    ValueError: shapes, dtypes or ranges of the tables are wrong.
    RangeCoderError: the compressed data is invalid for these tables, or an
      escaped value decodes outside the int32 range.
  """
  centers, pmf, radius = _check_tables(centers, pmf)
  n = centers.shape[0]
  if not n:
    return np.zeros((0,), np.int32)
  try:
    symbols = np.asarray(decoder.decode(_CATEGORICAL_FAMILY, pmf), np.int64)
    escaped = symbols == 2 * radius + 1
    values = centers + symbols - radius
    num_escaped = int(escaped.sum())
    if num_escaped:
      lengths = np.asarray(decoder.decode(_LENGTH_MODEL, num_escaped), np.int64) + 1
      sizes, used = _payload_layout(lengths)
      slots = np.zeros(sizes.shape, np.int64)
      slots[used] = decoder.decode(_UNIFORM_FAMILY, sizes[used].astype(np.int32))
  except Exception as e:  # constriction raises assorted types on invalid data.
    raise RangeCoderError(
        f"invalid compressed data for these tables ({type(e).__name__}: {e})") from e
  # constriction keeps decoded symbols inside their alphabets; checked anyway
  # because garbage must never turn into an IndexError or a silent wrap-around.
  if symbols.min() < 0 or symbols.max() > 2 * radius + 1:
    raise RangeCoderError("range decoder returned symbols outside the table")
  if num_escaped:
    if (np.any(lengths < 1) or np.any(lengths > _NUM_LENGTH_CLASSES)
        or np.any(slots < 0) or np.any(slots >= sizes)):
      raise RangeCoderError("range decoder returned escape symbols out of range")
    # Unused high chunks are 0, so this is right for every k.
    mantissa = (slots[:, 1] << _CHUNK_BITS) | slots[:, 2]
    magnitude = radius + np.left_shift(1, lengths - 1) + mantissa
    values[escaped] = centers[escaped] + np.where(slots[:, 0] == 1, -magnitude,
                                                  magnitude)
  if values.min() < _INT32_MIN or values.max() > _INT32_MAX:
    raise RangeCoderError(
        "an escaped value decodes outside the int32 range: the compressed data is "
        "corrupted or the tables differ from the encoder's")
  return values.astype(np.int32)
