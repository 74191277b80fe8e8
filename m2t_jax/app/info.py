"""``m2t info``: the human-readable report of a stream's header (the format
itself is ``m2t_jax/coding/bitstream.py``)."""

from m2t_jax.coding import bitstream, rate_code


def _size_schedule(codes) -> str:
  """The size-schedule line: exits, or exit:width pairs when a step names an MLP
  width (a code is exit + 16 * width, ``entropy/nested.py``)."""
  if all(c < 16 for c in codes):
    return f"  size schedule: exits {','.join(map(str, codes))} (model exit of each step)"
  pairs = ",".join(f"{c % 16}:{c // 16}" for c in codes)
  return f"  size schedule: {pairs} (model exit:MLP width of each step)"


def describe(header: bitstream.Header, payload_bytes: int | None = None,
             version: int = bitstream.FORMAT_VERSION) -> str:
  """Multi-line human-readable summary of a header, for ``m2t info``.

  Args:
    header: as returned by ``unpack``.
    payload_bytes: optional payload length; if given, sizes and the bits per
      pixel of the whole stream (header and CRC included) are added.
    version: the stream's format version (byte 4).
  """
  lines = [
      f"m2t_jax stream, format version {version}",
      f"  model:       {header.model_kind}",
      f"  fingerprint: {header.fingerprint.hex()}",
      # The header alone cannot tell an image stream from a latent one (only the
      # model's fingerprint, which info does not load, does), so both are named.
      f"  size:        {header.width} x {header.height} (width x height; pixels, "
      "or latent cells for a stream of EntropyCoder.compress)",
      f"  schedule:    {header.order}, {header.num_steps} steps, "
      f"alpha {header.alpha:g}",
      *([_size_schedule(header.size_schedule)] if header.size_schedule else []),
      f"  step widths: {header.step_widths} (how the encoder ran the decode steps)",
      *([f"  quality:     {rate_code.quality_of_code(header.rate_code):.2f} "
         f"(rate code {header.rate_code}; a variable-rate model)"]
        if header.rate_code is not None else []),
      f"  written on:  {header.writer}",
      f"  latent CRC:  {header.latent_crc:08x}",
  ]
  if payload_bytes is not None:
    overhead = bitstream.OVERHEAD_BYTES.get(version, bitstream.HEADER_BYTES)
    total = overhead + len(header.size_schedule) + payload_bytes
    bpp = 8 * total / (header.height * header.width)
    lines.append(f"  bytes:       {total} ({payload_bytes} payload + "
                 f"{total - payload_bytes} header/CRC), {bpp:.4f} bits per pixel "
                 "(per latent cell for a latent stream)")
  return "\n".join(lines)
