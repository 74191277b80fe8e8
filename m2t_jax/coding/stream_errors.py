"""The exceptions a stream raises when it cannot be decoded, and the size check
that refuses a header's claim before anything is allocated (``bitstream.py``
re-exports them; ``m2t_jax`` exports the classes)."""


class BitstreamError(ValueError):
  """Raised for every malformed, truncated, corrupted or foreign stream.

  The message says which check failed (truncated, not an m2t_jax stream, newer
  format version, CRC mismatch, invalid header field, payload size mismatch, a
  field that disagrees with the decoding model, a payload that does not decode).
  """


class DecodeMismatchError(BitstreamError):
  """The payload did not decode to the latent the encoder wrote (its CRC differs,
  or the range decoder failed on a stream whose bytes are intact).

  The usual cause is a decoder whose coding tables differ from the encoder's by a
  float ULP: another backend (CPU vs GPU) or another JAX/XLA version. The message
  names the writer's and the reader's backend and JAX version.
  """


class StreamTooLargeError(BitstreamError):
  """The header claims an image (or latent) larger than the decoder's limit
  (``Codec.max_pixels``, ``EntropyCoder.max_cells``); nothing was allocated."""


def check_size(count: int, limit: int, unit: str, what: str, knob: str) -> None:
  """StreamTooLargeError unless ``count`` (the header's claim) <= ``limit``."""
  if count > limit:
    raise StreamTooLargeError(
        f"The stream claims a {what} ({count} {unit}), more than this decoder's "
        f"limit of {limit}; refused before allocating anything. If you trust the "
        f"stream, raise {knob}.")
