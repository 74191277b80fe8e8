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
versions, can differ in the last bit of a float and then decode a wrong latent.
"""

import hashlib
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m2t_jax import saved_model
from m2t_jax.coding import bitstream, range_coder, tables
from m2t_jax.coding.bitstream import BitstreamError
from m2t_jax.coding.steps import CodingLoop, element_bits
from m2t_jax.entropy import gmm, patches, registry

# What the range coder can code exactly: int32 values (escape path included).
LATENT_MIN, LATENT_MAX = -(2**31), 2**31 - 1


class LatentError(ValueError):
  """A latent the coder cannot take: wrong shape, not integer, not finite, or
  outside int32."""


def fingerprint(config, params, salt: bytes = b"") -> bytes:
  """16-byte digest of ``salt``, the config and every parameter's bytes."""
  digest = hashlib.sha256(salt)
  digest.update(json.dumps(ml_collections.ConfigDict(config).to_dict(),
                           sort_keys=True).encode())
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  for path, leaf in leaves:
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.digest()[:bitstream.FINGERPRINT_BYTES]


def check_latent(y_hat, channels: int) -> np.ndarray:
  """(h, w, C) integer-valued array -> int64; LatentError otherwise."""
  y = np.asarray(y_hat)
  if y.ndim != 3 or y.shape[2] != channels or y.shape[0] < 1 or y.shape[1] < 1:
    raise LatentError(f"Expected a latent of shape (h, w, {channels}) with h, w >= 1, "
                      f"got {y.shape}.")
  if max(y.shape[:2]) > bitstream.MAX_IMAGE_SIDE:
    raise LatentError(f"Latent sides must be at most {bitstream.MAX_IMAGE_SIDE}, got "
                      f"{y.shape[0]}x{y.shape[1]}.")
  if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer)
                             or np.issubdtype(y.dtype, np.floating)):
    raise LatentError(f"Expected integer latent values, got dtype {y.dtype}.")
  if np.issubdtype(y.dtype, np.floating):
    if not np.all(np.isfinite(y)):
      raise LatentError("The latent has non-finite values (NaN or inf).")
    if not np.all(y == np.round(y)):
      raise LatentError("The latent has non-integer values; round it first.")
  if y.size and (y.min() < LATENT_MIN or y.max() > LATENT_MAX):
    raise LatentError(f"Latent values must lie in [{LATENT_MIN}, {LATENT_MAX}] (int32), "
                      f"got [{y.min()}, {y.max()}].")
  return y.astype(np.int64)


class EntropyCoder:
  """An entropy model and its parameters: latents <-> bytes."""

  def __init__(self, config, params):
    """config: a full config (any registered kind); params: the entropy model's
    parameters (``params['entropy_model']`` of a full model)."""
    from m2t_jax import model as model_lib  # noqa: PLC0415 - model imports ELIC
    model_lib.validate_config(config)
    self.config = ml_collections.FrozenConfigDict(config)
    self.model = registry.build(self.config)
    self.params = params
    # Salted, so that a latent stream never passes for an image stream of a
    # Codec with the same entropy model (which fingerprints the whole model).
    self.fingerprint = fingerprint(self.config, params, b"entropy-coder")

  @classmethod
  def from_config(cls, config, seed: int = 0) -> "EntropyCoder":
    """A randomly initialised entropy model (tests, benchmarks)."""
    model = registry.build(config)
    tokens = jnp.zeros((1, model.num_tokens, config.latent_channels), jnp.float32)
    params = jax.jit(lambda key: model.init(key, tokens, tokens, method="rate"))(
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
  def compress(self, y_hat) -> bytes:
    """Integer latent (h, w, C) -> bytes (header + range-coded values + CRC)."""
    y = check_latent(y_hat, self.latent_channels)
    payload = self.encode_tokens(y[None])
    return bitstream.pack(self.header(y.shape[0], y.shape[1]), payload)

  def decompress(self, data: bytes) -> np.ndarray:
    """bytes -> int64 (h, w, C). Raises BitstreamError for any bad stream."""
    header, payload = self.unpack(data)
    return self.decode_tokens(payload, header.height, header.width)[0]

  def header(self, height: int, width: int, fingerprint_bytes: bytes | None = None):
    s = self.config.schedule
    return bitstream.Header(self.config.model, s.order, len(self.model.coding_plan()),
                            float(s.alpha), height, width,
                            fingerprint_bytes or self.fingerprint)

  def unpack(self, data, fingerprint_bytes: bytes | None = None, hint: str = ""):
    """(header, payload) of a stream this model wrote; BitstreamError otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
      raise BitstreamError(f"Expected bytes, got {type(data).__name__}.")
    header, payload = bitstream.unpack(bytes(data))
    expected = fingerprint_bytes or self.fingerprint
    if header.fingerprint != expected:
      raise BitstreamError(
          f"This stream was written by another model ({header.model_kind}, order "
          f"{header.order}, {header.num_steps} steps, fingerprint "
          f"{header.fingerprint.hex()[:12]}); this one is {self.config.model}:"
          f"{self.config.size} ({expected.hex()[:12]}). Decode it with the model "
          f"that wrote it.{hint}")
    return header, payload

  # --- the loop, four ways ------------------------------------------------------
  def _tokens(self, y_hat):
    tokens, valid = patches.to_patches(jnp.asarray(y_hat, jnp.int32), self.config.patch_size)
    return np.asarray(tokens).astype(np.int64), np.asarray(valid)

  def _loop(self, valid) -> CodingLoop:
    return CodingLoop(self.model, self.params, self.config, valid)

  def _tables(self, step):
    """(narrow mask, wide mask, wide tables or None) of a step's todo elements."""
    wide = tables.wide_elements(step.pmf, step.todo, self.config)
    wide_pmf = (tables.wide_tables(step.mixture, np.flatnonzero(wide), self.config)
                if wide.any() else None)
    return step.todo & ~wide, wide, wide_pmf

  def encode_tokens(self, y_hat: np.ndarray) -> bytes:
    """Range-coded payload of an int latent (1, h, w, C)."""
    tokens, valid = self._tokens(y_hat)
    encoder = range_coder.new_encoder()
    for step in self._loop(valid):
      group = step.take(tokens)
      narrow, wide, wide_pmf = self._tables(step)
      range_coder.encode_group(encoder, group[narrow], step.centers[narrow], step.pmf[narrow])
      if wide_pmf is not None:
        range_coder.encode_group(encoder, group[wide], step.centers[wide], wide_pmf)
      step.feed(group)
    return range_coder.finish(encoder)

  def decode_tokens(self, payload: bytes, h: int, w: int, num_steps: int | None = None,
                    timings: dict | None = None) -> np.ndarray:
    """The latent (1, h, w, C) of a payload: int64, or float64 when ``num_steps``
    = k < S (progressive decoding: groups from step k on hold their predicted
    mixture means; the model's steps run on, fed with those means).

    timings: optional dict that receives "steps_s" (jitted steps, tables
    included) and "range_coding_s" (seconds).
    """
    _, valid = patches.to_patches(jnp.zeros((1, h, w, 1), jnp.int32), self.config.patch_size)
    valid = np.asarray(valid)
    loop = self._loop(valid)
    total = len(loop)
    if num_steps is not None and not 0 <= num_steps <= total:
      raise ValueError(f"num_steps must be in 0..{total}, got {num_steps}.")
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
          narrow, wide, wide_pmf = self._tables(step)
          t1 = time.perf_counter()
          timings["steps_s"] += t1 - t0
          group[narrow] = range_coder.decode_group(decoder, step.centers[narrow],
                                                   step.pmf[narrow])
          if wide_pmf is not None:
            group[wide] = range_coder.decode_group(decoder, step.centers[wide], wide_pmf)
          timings["range_coding_s"] += time.perf_counter() - t1
        step.put(values, group)
        step.feed(group)
        t0 = time.perf_counter()
    except range_coder.RangeCoderError as e:
      raise BitstreamError(f"Corrupted payload: {e}") from e
    if coded_steps == total and not decoder.maybe_exhausted():
      # A valid stream ends exactly where its last step does.
      raise BitstreamError("Corrupted payload: data left over after the last step.")
    return np.asarray(patches.from_patches(values, 1, h, w, self.config.patch_size))

  def estimate_bits(self, y_hat: np.ndarray) -> float:
    """The model's rate of an int latent (1, h, w, C) in bits, from the continuous
    bin masses (the training formula), not the quantised tables: one pass for a
    ``one_pass_rate`` model, else the decode loop's distributions."""
    if self.model.one_pass_rate:
      return self.one_pass_bits(y_hat)
    tokens, valid = self._tokens(y_hat)
    bits = 0.0
    for step in self._loop(valid):
      group = step.take(tokens)
      elem = np.asarray(element_bits(step.mixture, group, self.config.gmm.prob_floor))
      bits += float(elem[step.todo].sum())
      step.feed(group)
    return bits

  def one_pass_bits(self, y_hat: np.ndarray) -> float:
    """Bits of ``rate(tokens, tokens)`` over the valid cells (eval mode)."""
    tokens, valid = patches.to_patches(jnp.asarray(y_hat, jnp.float32), self.config.patch_size)
    if not hasattr(self, "_rate_fn"):
      self._rate_fn = jax.jit(lambda p, t: self.model.apply({"params": p}, t, t,
                                                            method="rate").bits)
    elem = self._rate_fn(self.params, tokens)
    return float(jnp.sum(elem * valid[..., None]))
