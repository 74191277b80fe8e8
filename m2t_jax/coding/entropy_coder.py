"""EntropyCoder: integer latents to real bytes and back, with any entropy model.

For researchers with their own autoencoder:

    coder = EntropyCoder.from_config(get_config("m2t", "tiny"), seed=0)  # or .load(path)
    data = coder.compress(y_hat)       # int array (h, w, coder.latent_channels)
    y_hat2 = coder.decompress(data)    # int64 (h, w, C), equal to y_hat

The latent is cut into w_T x w_T patches (``entropy/patches.py``; padding cells
are zeros and never coded) and all patches are coded as one batch, step by step
over the model's coding plan (``coding/steps.py``), each step's elements with
narrow tables and the few uncertain ones with wide tables (``coding/tables.py``),
through constriction's range coder (``coding/range_coder.py``). The stream is the
container of ``coding/bitstream.py``; its height and width fields hold the
latent's h and w. ``Codec`` (``m2t_jax/codec.py``) is the ELIC autoencoder plus an
EntropyCoder and writes the same container with the image's size instead.

Four small functions drive the one loop of coding steps: ``encode_tokens``,
``decode_tokens`` (with progressive decoding: predicted means past step k),
``estimate_bits`` and the rate of a one-pass model (``one_pass_bits``).

What to expect across machines: encoder and decoder must compute bit-identical
tables. That holds for the same model on the same backend and jax/XLA version
(tested across processes). Encoding on CPU and decoding on GPU, or across XLA
versions, can differ in the last bit of a float and then decode a wrong latent:
the stream carries a CRC of the latent, so that case raises
``DecodeMismatchError`` (naming both sides' backend and JAX version) instead of
returning it.

Hostile streams: ``unpack`` checks the container, then every header field
against this model (kind, order, steps, alpha, fingerprint: each refusal names
the field), then the claimed size against ``max_cells`` before anything is
allocated. During decoding, a payload that runs out while a step still has more
than ``_EXHAUSTED_SLACK_BITS`` bits of information to decode stops at that step.
"""

import numbers
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m2t_jax import saved_model
from m2t_jax.coding import bitstream, determinism, range_coder, tables
from m2t_jax.coding.bitstream import BitstreamError, DecodeMismatchError, check_size
from m2t_jax.coding.fingerprint import fingerprint, shared_decoding_config
from m2t_jax.coding.rate_code import level_of_code
from m2t_jax.coding.steps import CodingLoop, element_bits
from m2t_jax.input_checks import check_latent
from m2t_jax.nn import precision
from m2t_jax.entropy import gmm, patches, registry

# A range decoder whose data has run out still holds at most 64 bits of state;
# decoding more information than that from it means the payload is too short for
# the header (a forged size) or the tables differ. The slack covers the fixed-
# point quantisation of the tables (the bound below is computed from floats).
_EXHAUSTED_SLACK_BITS = 96.0


def _min_bits(pmf: np.ndarray) -> float:
  """A lower bound on the bits any symbols cost under these (N, n) tables: per
  row -log2 of the largest probability, raised by the most the coder's 24-bit
  quantisation can add to it."""
  if pmf is None or not pmf.size:
    return 0.0
  pmf = np.asarray(pmf, np.float64)
  top = pmf.max(axis=1) / pmf.sum(axis=1)
  top = np.minimum(1.0, top * (1 + 1e-3) + pmf.shape[1] * 2.0**-23)
  return float(-np.log2(top).sum())


class EntropyCoder:
  """An entropy model and its parameters: latents <-> bytes."""

  def __init__(self, config, params, max_cells: int | None = None):
    """config: a full config (any registered kind); params: the entropy model's
    parameters (``params['entropy_model']`` of a full model); max_cells: the
    largest latent (h * w cells) ``decompress`` accepts from a header, default
    ``bitstream.DEFAULT_MAX_PIXELS`` / 256 (a 16x downscaling autoencoder's
    latent of Pillow's limit); settable later as ``coder.max_cells``."""
    from m2t_jax import model as model_lib  # noqa: PLC0415 - model imports ELIC
    model_lib.validate_config(config)
    config = precision.coding_config(config)  # always float32 (nn/precision.py)
    self.config = ml_collections.FrozenConfigDict(config)
    # Models, coding steps and tables are kept per config: built from the
    # process's shared config of these decoding fields, coders that differ only
    # in training fields share their compilations.
    self._shared_config = shared_decoding_config(self.config)
    self.model = registry.build(self._shared_config)
    self.params = params
    # Salted, so that a latent stream never passes for an image stream of a
    # Codec with the same entropy model (which fingerprints the whole model).
    self.fingerprint = fingerprint(self.config, params, b"entropy-coder")
    self.max_cells = (bitstream.DEFAULT_MAX_PIXELS // 256 if max_cells is None
                      else int(max_cells))

  @classmethod
  def from_config(cls, config, seed: int = 0) -> "EntropyCoder":
    """A randomly initialised entropy model (tests, benchmarks)."""
    model = registry.build(config)
    tokens = jnp.zeros((1, model.num_tokens, config.latent_channels), jnp.float32)
    # A level only for a variable-rate model (kinds without rate_level still init).
    extra = ({"rate_level": jnp.zeros((1,), jnp.float32)}
             if getattr(model, "rate_anchors", 0) else {})
    params = jax.jit(lambda key: model.init(key, tokens, tokens, method="rate", **extra))(
        jax.random.key(seed))["params"]
    return cls(config, params)

  @classmethod
  def load(cls, path: str | None = None) -> "EntropyCoder":
    """The entropy model of a saved or shipped model (``saved_model.locate``)."""
    config, params = saved_model.load_params(saved_model.locate(path))
    return cls(config, params["entropy_model"])

  @property
  def latent_channels(self) -> int:
    return int(self.config.latent_channels)

  @property
  def name(self) -> str:
    return f"{self.config.model}:{self.config.size} ({self.fingerprint.hex()[:12]})"

  # --- latents <-> bytes --------------------------------------------------------
  @property
  def variable_rate(self) -> bool:
    """Whether the entropy model is conditioned on a rate level (then every
    stream carries its rate code: ``bitstream.Header.rate_code``)."""
    return bool(getattr(self.model, "rate_anchors", 0))

  def check_rate_code(self, rate_code) -> None:
    """ValueError unless a variable-rate model gets a rate code 0..RATE_CODE_MAX
    and a fixed-rate model None."""
    if self.variable_rate:
      if isinstance(rate_code, bool) or not isinstance(rate_code, numbers.Integral) or not (
          0 <= rate_code <= bitstream.RATE_CODE_MAX):
        raise ValueError(f"This variable-rate model codes at a rate code in 0.."
                         f"{bitstream.RATE_CODE_MAX}, got {rate_code!r}.")
    elif rate_code is not None:
      raise ValueError(f"This model ({self.config.model}:{self.config.size}) has one "
                       "rate: it takes no rate level or quality.")

  def compress(self, y_hat, size_schedule=None, rate_code: int | None = None) -> bytes:
    """Integer latent (h, w, C) -> bytes (header + range-coded values + CRC).
    LatentError (before anything is written) for a latent the coder cannot take.
    size_schedule: a nested model's exits per step (``resolve_size_schedule``:
    None = the model's default, a name, or indices); ValueError for one the model
    cannot run. The stream records it; the decoder runs it. rate_code: a
    variable-rate model's rate level code (0..``bitstream.RATE_CODE_MAX``,
    level = code / RATE_CODE_MAX), recorded in the stream; None for the others."""
    self.check_rate_code(rate_code)
    y = check_latent(y_hat, self.latent_channels)
    if y.shape[0] * y.shape[1] > self.max_cells:  # what a decoder would refuse
      raise ValueError(f"The latent is {y.shape[0]} x {y.shape[1]} ({y.shape[0] * y.shape[1]} "
                       f"cells), more than coder.max_cells ({self.max_cells}): its stream "
                       "would be refused by a decoder with the same limit. Raise "
                       "coder.max_cells to code it anyway.")
    schedule = self.model.resolve_size_schedule(size_schedule)
    payload = self.encode_tokens(y[None], schedule, rate_code)
    return bitstream.pack(self.header(y.shape[0], y.shape[1], bitstream.latent_crc(y),
                                      size_schedule=schedule, rate_code=rate_code),
                          payload)

  def decompress(self, data: bytes) -> np.ndarray:
    """bytes -> int64 (h, w, C). Raises BitstreamError for any bad stream
    (``StreamTooLargeError`` past ``max_cells``, ``DecodeMismatchError`` when
    the payload does not decode to what was written)."""
    header, payload = self.unpack(data)
    check_size(header.height * header.width, self.max_cells, "latent cells",
               f"{header.height} x {header.width} latent", "coder.max_cells")
    return self.decode_tokens(payload, header.height, header.width, header=header)[0]

  def header(self, height: int, width: int, crc: int,
             fingerprint_bytes: bytes | None = None,
             size_schedule: tuple = (), rate_code: int | None = None) -> bitstream.Header:
    """The header of a stream of this model: schedule fields from the config,
    ``crc`` = ``bitstream.latent_crc`` of the coded latent, this process's
    backend and JAX version, the resolved ``size_schedule``, how this process
    runs the decode steps (``step_widths``) and the rate code (variable rate)."""
    s = self.config.schedule
    return bitstream.Header(self.config.model, s.order, len(self.model.coding_plan()),
                            float(s.alpha), height, width,
                            fingerprint_bytes or self.fingerprint, crc,
                            size_schedule=tuple(size_schedule),
                            step_widths=self.model.resolved_step_widths(),
                            rate_code=rate_code)

  def scheduled(self, size_schedule=None):
    """The entropy model running ``size_schedule`` (None = its default)."""
    return self.model.with_size_schedule(self.model.resolve_size_schedule(size_schedule))

  def unpack(self, data, fingerprint_bytes: bytes | None = None, hint: str = ""):
    """(header, payload) of a stream this model wrote; BitstreamError otherwise.

    Checks the container (``bitstream.unpack``), then each header field against
    this model, naming the first that differs: a stream whose fields were edited
    (with its CRC recomputed) is refused rather than decoded with this model's
    own schedule.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
      raise BitstreamError(f"Expected bytes, got {type(data).__name__}.")
    header, payload = bitstream.unpack(bytes(data))
    expected = self.header(header.height, header.width, 0, fingerprint_bytes)
    for field, what in (("model_kind", "model kind"), ("order", "schedule order"),
                        ("num_steps", "number of steps"), ("alpha", "schedule alpha")):
      got, want = getattr(header, field), getattr(expected, field)
      if field == "alpha":
        want = float(np.float32(want))  # The header holds float32.
      if got != want:
        raise BitstreamError(
            f"The stream's {what} is {got!r} but this model ({self.config.model}:"
            f"{self.config.size}) decodes with {want!r}: it was written by another "
            f"model or its header was altered. Decode it with the model that wrote "
            f"it.{hint}")
    if header.fingerprint != expected.fingerprint:
      raise BitstreamError(
          f"This stream was written by another model ({header.model_kind}, order "
          f"{header.order}, {header.num_steps} steps, fingerprint "
          f"{header.fingerprint.hex()[:12]}); this one is {self.config.model}:"
          f"{self.config.size} ({expected.fingerprint.hex()[:12]}). Decode it with "
          f"the model that wrote it.{hint}")
    if self.variable_rate != (header.rate_code is not None):
      raise BitstreamError(
          ("The stream has no rate level, but this model is a variable-rate one: it "
           "was written by another model or its header was altered."
           if self.variable_rate else
           "The stream carries a rate level (a variable-rate model wrote it), but "
           "this model has one rate.") + hint)
    try:
      self.model.with_size_schedule(header.size_schedule)
    except ValueError as e:
      raise BitstreamError(f"The stream's size schedule {header.size_schedule} cannot "
                           f"run on this model ({self.config.model}:"
                           f"{self.config.size}): {e}{hint}") from e
    return header, payload

  # --- the loop, four ways ------------------------------------------------------
  def _tokens(self, y_hat):
    tokens, valid = patches.to_patches(jnp.asarray(y_hat, jnp.int32), self.config.patch_size)
    return np.asarray(tokens).astype(np.int64), np.asarray(valid)

  def _loop(self, valid, model=None, rate_code: int | None = None) -> CodingLoop:
    return CodingLoop(self.model if model is None else model, self.params,
                      self._shared_config, valid, level_of_code(rate_code))

  def _tables(self, step):
    """(narrow mask, wide mask, narrow tables, wide tables or None) of a step's
    todo elements. Encoder and decoder both get their tables here (tests perturb
    it to play a decoder whose tables differ)."""
    wide = tables.wide_elements(step.pmf, step.todo, self._shared_config)
    wide_pmf = (tables.wide_tables(step.mixture, np.flatnonzero(wide), self._shared_config)
                if wide.any() else None)
    narrow = step.todo & ~wide
    return narrow, wide, step.pmf[narrow], wide_pmf

  def encode_tokens(self, y_hat: np.ndarray, size_schedule=None,
                    rate_code: int | None = None) -> bytes:
    """Range-coded payload of an int latent (1, h, w, C) (with ``size_schedule``
    and ``rate_code``, see ``compress``); LatentError first if the coder cannot
    take it."""
    self.check_rate_code(rate_code)
    tokens, valid = self._tokens(check_latent(y_hat, self.latent_channels, batched=True))
    encoder = range_coder.new_encoder()
    for step in self._loop(valid, self.scheduled(size_schedule), rate_code):
      group = step.take(tokens)
      narrow, wide, narrow_pmf, wide_pmf = self._tables(step)
      range_coder.encode_group(encoder, group[narrow], step.centers[narrow], narrow_pmf)
      if wide_pmf is not None:
        range_coder.encode_group(encoder, group[wide], step.centers[wide], wide_pmf)
      step.feed(group)
    return range_coder.finish(encoder)

  def decode_tokens(self, payload: bytes, h: int, w: int, num_steps: int | None = None,
                    timings: dict | None = None,
                    header: bitstream.Header | None = None,
                    size_schedule=None, rate_code: int | None = None) -> np.ndarray:
    """The latent (1, h, w, C) of a payload: int64, or float64 when ``num_steps``
    = k < S (progressive decoding: groups from step k on hold their predicted
    mixture means; the model's steps run on, fed with those means).

    timings: optional dict that receives "steps_s" (jitted steps, tables
      included) and "range_coding_s" (seconds).
    header: the stream's header, when the payload came from one (an intact
      container): a full decode is then checked against its latent CRC, and
      every failure raises ``DecodeMismatchError`` naming writer and reader.
      Without it, failures raise ``BitstreamError``.
    size_schedule, rate_code: the header's, when given; else these (see
    ``compress``).
    """
    _, valid = patches.to_patches(jnp.zeros((1, h, w, 1), jnp.int32), self.config.patch_size)
    valid = np.asarray(valid)
    model = (self.model.with_size_schedule(header.size_schedule)
             .with_step_widths(header.step_widths) if header is not None
             else self.scheduled(size_schedule))
    rate_code = header.rate_code if header is not None else rate_code
    self.check_rate_code(rate_code)
    loop = self._loop(valid, model, rate_code)
    total = len(loop)
    if num_steps is not None and (not isinstance(num_steps, numbers.Integral)
                                  or isinstance(num_steps, bool)
                                  or not 0 <= num_steps <= total):
      # (True or 1.5 would otherwise pass the range check as a partial decode.)
      raise ValueError(f"num_steps must be an integer in 0..{total}, got {num_steps!r}.")
    coded_steps = total if num_steps is None else num_steps
    values = np.zeros(valid.shape + (self.latent_channels,),
                      np.int64 if coded_steps == total else np.float64)
    timings = {} if timings is None else timings
    timings.setdefault("steps_s", 0.0)
    timings.setdefault("range_coding_s", 0.0)
    try:
      decoder = range_coder.new_decoder(payload)
      t0 = time.perf_counter()
      for step in loop:
        group = step.take(values)
        if step.index >= coded_steps:
          group[step.todo] = np.asarray(gmm.mixture_mean(step.mixture))[step.todo]
        else:
          narrow, wide, narrow_pmf, wide_pmf = self._tables(step)
          if decoder.maybe_exhausted() and (
              _min_bits(narrow_pmf) + _min_bits(wide_pmf) > _EXHAUSTED_SLACK_BITS):
            raise range_coder.RangeCoderError(
                f"the payload ran out at step {step.index + 1} of {total}")
          t1 = time.perf_counter()
          timings["steps_s"] += t1 - t0
          group[narrow] = range_coder.decode_group(decoder, step.centers[narrow],
                                                   narrow_pmf)
          if wide_pmf is not None:
            group[wide] = range_coder.decode_group(decoder, step.centers[wide], wide_pmf)
          timings["range_coding_s"] += time.perf_counter() - t1
        step.put(values, group)
        step.feed(group)
        t0 = time.perf_counter()
      if coded_steps == total and not decoder.maybe_exhausted():
        # A valid stream ends exactly where its last step does.
        raise range_coder.RangeCoderError("data left over after the last step")
    except range_coder.RangeCoderError as e:
      if header is None:
        raise BitstreamError(f"Corrupted payload: {e}.") from e
      raise self._mismatch(header, f"the range decoder failed ({e})") from e
    latent = np.asarray(patches.from_patches(values, 1, h, w, self.config.patch_size))
    if header is not None and coded_steps == total:
      crc = bitstream.latent_crc(latent)
      if crc != header.latent_crc:
        raise self._mismatch(header, f"the decoded latent's CRC32 is {crc:08x}, the "
                             f"stream's {header.latent_crc:08x}")
    return latent

  @staticmethod
  def _mismatch(header: bitstream.Header, what: str) -> DecodeMismatchError:
    reader = bitstream.describe_writer(*bitstream.this_writer())
    same = reader == header.writer
    advice = (
        "Writer and reader match, so the stream was most likely altered after it "
        "was written (with its CRC recomputed), or the model's tables are not "
        "deterministic here; compress the image again." if same else
        f"Coding tables must be bit-identical on both sides, which holds on the "
        f"same backend and JAX version: decode it on {header.writer}, or compress "
        f"the image again here.")
    return DecodeMismatchError(
        f"The payload did not decode to the latent its encoder wrote: {what}. The "
        f"stream was written on {header.writer} and is being read on {reader}. "
        f"{advice}")

  def estimate_bits(self, y_hat: np.ndarray, size_schedule=None,
                    rate_code: int | None = None) -> float:
    """The model's rate of an int latent (1, h, w, C) in bits, from the continuous
    bin masses (the training formula), not the quantised tables: one pass for a
    ``one_pass_rate`` model, else the decode loop's distributions."""
    self.check_rate_code(rate_code)
    y_hat = check_latent(y_hat, self.latent_channels, batched=True)
    if self.model.one_pass_rate:
      return self.one_pass_bits(y_hat, size_schedule, rate_code)
    tokens, valid = self._tokens(y_hat)
    bits = 0.0
    for step in self._loop(valid, self.scheduled(size_schedule), rate_code):
      group = step.take(tokens)
      elem = np.asarray(element_bits(step.mixture, group, self.config.gmm.prob_floor))
      bits += float(elem[step.todo].sum())
      step.feed(group)
    return bits

  def one_pass_bits(self, y_hat: np.ndarray, size_schedule=None,
                    rate_code: int | None = None) -> float:
    """Bits of ``rate(tokens, tokens)`` over the valid cells (eval mode)."""
    self.check_rate_code(rate_code)
    y_hat = check_latent(y_hat, self.latent_channels, batched=True)
    tokens, valid = patches.to_patches(jnp.asarray(y_hat, jnp.float32), self.config.patch_size)
    model = self.scheduled(size_schedule)
    self._rate_fns = getattr(self, "_rate_fns", {})
    if model not in self._rate_fns:
      self._rate_fns[model] = determinism.jit(
          lambda p, t, level: model.apply({"params": p}, t, t, method="rate", **(
              {} if level is None else {"rate_level": level})).bits)
    elem = self._rate_fns[model](self.params, tokens,
                                 level_of_code(rate_code, tokens.shape[0]))
    return float(jnp.sum(elem * valid[..., None]))
