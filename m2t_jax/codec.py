"""Codec: images to real bytes and back (the ELIC autoencoder + an EntropyCoder).

    codec = Codec.from_config(get_config("m2t", "tiny"))   # random weights
    data = codec.compress(image)       # uint8 (H, W, 3), any H, W >= 1
    image2 = codec.decompress(data)    # uint8 (H, W, 3)

Compression pads the image (edge replication) to multiples of ``DOWNSCALE`` (16),
runs E, rounds, and hands the latent to the entropy coder
(``coding/entropy_coder.py``), which codes it over the entropy model's coding
steps; the container (``coding/bitstream.py``) records the image's size, so the
decoder crops exactly. Decompression decodes the latent, runs D and crops. The
decoded image equals ``estimate(image)['reconstruction']`` bit for bit (same
y_hat, same jitted D).

A Codec stream's fingerprint covers the whole model (the config's decoding
fields, E, D and the entropy model: ``coding/fingerprint.py``), so a stream
decodes only with a model that decodes it exactly as the writer would.

What to expect across machines: see ``coding/entropy_coder.py`` (encode and
decode on the same kind of device and software; otherwise a wrong decode raises
``DecodeMismatchError`` rather than returning a wrong image).

Encoder-side refinement (``refine.py``): ``compress(image, effort=N)`` (an
effort level, 0 to ``refine.MAX_EFFORT``), ``codec.refine =
RefineSettings(steps=N)`` or ``compress(image, refine=N)`` searches, per image, for
a latent with a lower RD loss than E's before coding it; decoding is unchanged.
Off (effort 0) by default in Python; ``m2t compress`` and ``m2t eval`` turn it on
(``--effort``, default ``refine.DEFAULT_EFFORT``).

Variable rate: a model trained with ``variable_rate`` (``m2t_jax/model.py``)
codes at any quality Q in 0..100 (``compress(image, quality=Q)``, default
``model.DEFAULT_QUALITY``), or at a size: ``compress(image, target_bpp=B)`` /
``target_size=BYTES`` search the quality (``rate_target.py``). The stream
records the quality (its rate code); decoding needs nothing else.

Hostile streams: every failure is a ``BitstreamError`` with a message naming the
check; a header claiming more than ``max_pixels`` pixels (default Pillow's
decompression-bomb limit, ``bitstream.DEFAULT_MAX_PIXELS`` = 89,478,485) is
refused (``StreamTooLargeError``) before anything is allocated.
"""

import functools
import time
import warnings

import jax.numpy as jnp
import ml_collections
import numpy as np

from m2t_jax import model as model_lib
from m2t_jax.nn import precision
from m2t_jax import refine as refine_lib
from m2t_jax import saved_model
from m2t_jax.coding import bitstream, determinism
from m2t_jax.coding.bitstream import (BitstreamError, DecodeMismatchError,
                                      StreamTooLargeError)
from m2t_jax import rate_target
from m2t_jax.coding import rate_code as rate_code_lib
from m2t_jax.coding.entropy_coder import EntropyCoder
from m2t_jax.input_checks import ImageError, LatentError, check_image, check_latent
from m2t_jax.coding.fingerprint import fingerprint, shared_decoding_config
from m2t_jax.nn.elic import DOWNSCALE

__all__ = ["BitstreamError", "Codec", "DecodeMismatchError", "ImageError",
           "RefineSettings", "StreamTooLargeError"]

RefineSettings = refine_lib.RefineSettings


@functools.lru_cache(maxsize=16)
def _autoencoder_fns(config: ml_collections.FrozenConfigDict):
  """(analysis, synthesize), jitted once per config and process, so that every
  Codec of a config shares their compilations (a new jit per Codec would
  reload each executable from the persistent cache, or compile it again):
  analysis(params, x, level) = y, E of a padded float32 (1, H, W, 3) image
  (0..255), unrounded (refinement starts from it); synthesize(params, y_hat,
  level) = D's image, rounded and clipped to uint8 (1, H, W, 3); level: a
  variable-rate model's rate level (1,) float32, else None."""
  model = model_lib.build_model(config)
  analysis = determinism.jit(lambda p, x, level: model.apply(
      {"params": p}, x, level, method=model_lib.CompressionModel.encode))
  synthesize = determinism.jit(lambda p, y, level: jnp.clip(jnp.round(model.apply(
      {"params": p}, y, level, method=model_lib.CompressionModel.decode)), 0, 255
  ).astype(jnp.uint8))
  return analysis, synthesize


def latent_size(height: int, width: int) -> tuple[int, int]:
  """(h, w) of the latent of a height x width image: ceil(side / DOWNSCALE)."""
  return -(-height // DOWNSCALE), -(-width // DOWNSCALE)


class Codec:
  """A full model (E, D, entropy model) and its parameters."""

  def __init__(self, config, params, max_pixels: int = bitstream.DEFAULT_MAX_PIXELS,
               refine: "RefineSettings | int | None" = None, effort: int | None = None):
    """config, params: a full model's; max_pixels: the largest image (height x
    width) ``decompress`` accepts from a header, settable later as
    ``codec.max_pixels``; refine: the encoder's latent refinement
    (``RefineSettings`` or a number of steps; None or 0: none), or effort: an
    effort level (``RefineSettings.for_effort``; not both), settable later as
    ``codec.refine``; images above ``codec.refine_max_pixels`` pixels are coded
    unrefined (memory)."""
    self.max_pixels = int(max_pixels)
    self.refine = refine_lib.resolve_settings(refine, RefineSettings(), effort)
    self.refine_max_pixels = refine_lib.MAX_PIXELS
    # A variable-rate model's quality when a call gives none (None:
    # model.DEFAULT_QUALITY); settable, like codec.refine.
    self.quality = None
    self._refine_steps = {}  # jitted refinement steps, per image shape and settings
    config = precision.coding_config(config)  # always float32 (nn/precision.py)
    self.config = ml_collections.FrozenConfigDict(config)
    model_lib.validate_config(self.config)
    # Built from the process's shared config of these decoding fields, so that
    # Codecs differing only in training fields share their compilations.
    shared = shared_decoding_config(self.config)
    self.model = model_lib.build_model(shared)
    self.params = params
    self.fingerprint = fingerprint(self.config, params)
    # The entropy coder keeps its own (latent-stream) fingerprint; image streams
    # carry the whole model's, so neither kind of stream decodes as the other.
    self.entropy_coder = EntropyCoder(self.config, params["entropy_model"])
    self.entropy_model = self.entropy_coder.model
    self._analysis, self._synthesize = _autoencoder_fns(shared)

  # --- construction -----------------------------------------------------------
  @classmethod
  def from_config(cls, config, seed: int = 0) -> "Codec":
    """A randomly initialised model (tests, benchmarks). seed: an int in the
    int64 range (jax.random.key's); ValueError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not (
        -(2**63) <= int(seed) < 2**63):
      raise ValueError(f"seed must be an integer in [-2**63, 2**63), got {seed!r}.")
    return cls(config, model_lib.init_params(config, int(seed)))

  @classmethod
  def load(cls, path: str | None = None,
           max_pixels: int = bitstream.DEFAULT_MAX_PIXELS,
           refine: "RefineSettings | int | None" = None,
           effort: int | None = None) -> "Codec":
    """A trained model.

    path: a folder written by ``save`` (config.json + params.npz); or None for
      the default model shipped in the package; or the name of a shipped model
      (a kind such as 'm2t' or 'mt', or a name from ``m2t_jax/models/manifest.json``).
    refine, effort: the encoder's latent refinement (see ``__init__``).
    Raises FileNotFoundError when there is no such model.
    """
    return cls(*saved_model.load_params(saved_model.locate(path)), max_pixels=max_pixels,
               refine=refine, effort=effort)

  def save(self, path: str) -> None:
    """Writes config.json and params.npz (parameters only) into folder ``path``."""
    saved_model.save_params(path, self.config, self.params)

  @property
  def name(self) -> str:
    return f"{self.config.model}:{self.config.size} ({self.fingerprint.hex()[:12]})"

  @property
  def variable_rate(self) -> bool:
    """Whether this model codes at any quality (``compress(quality=...)``)."""
    return model_lib.is_variable_rate(self.config)

  def rate_code(self, quality=None) -> int | None:
    """The stream's rate code of ``quality`` (0..100; None: ``codec.quality``,
    else ``model.DEFAULT_QUALITY``) for a variable-rate model; None for a
    fixed-rate model, which takes no quality (ValueError if one is given, or for
    a quality outside 0..100)."""
    quality = self.quality if quality is None else quality
    if not self.variable_rate:
      if quality is not None:
        raise ValueError(f"This model ({self.name}) has one rate: it takes no "
                         "quality. Use a variable-rate model, or pick a model per rate.")
      return None
    return rate_code_lib.code_of_quality(
        rate_code_lib.DEFAULT_QUALITY if quality is None else quality)

  @property
  def lmbda(self) -> float:
    """The RD trade-off (lambda on MSE over 0..255) the model codes at: its
    training lambda, or a variable-rate model's lambda at ``codec.quality``."""
    level = rate_code_lib.level_of_code(self.rate_code())
    if level is None:
      return float(self.config.get("lmbda", float("nan")))
    return float(model_lib.lmbda_of_level(self.config, float(level)))

  def _level(self, rate_code):
    """The jitted functions' level argument: (1,) float32, or None."""
    level = rate_code_lib.level_of_code(rate_code)
    return None if level is None else jnp.full((1,), level, jnp.float32)

  # --- the autoencoder ----------------------------------------------------------
  def analyze(self, image: np.ndarray, refine: "RefineSettings | int | None" = None,
              effort: int | None = None, quality=None) -> np.ndarray:
    """uint8 (H, W, 3) -> the latent that compress codes: y_hat int64 (1, h, w, C),
    h, w = ``latent_size(H, W)``. refine: None (``codec.refine``), a number of
    steps or ``RefineSettings``; or effort: an effort level, 0 (E's latent) to
    ``refine.MAX_EFFORT`` (ValueError otherwise, or with refine too); images above
    ``refine_max_pixels`` pixels get E's latent unrefined. quality: a
    variable-rate model's (0..100, None = the default; see ``rate_code``)."""
    image = check_image(image)
    rate_code = self.rate_code(quality)
    settings = refine_lib.resolve_settings(refine, self.refine, effort)
    x = model_lib.pad_to_multiple(jnp.asarray(image, jnp.float32)[None])
    y = self._analysis(self.params, x, self._level(rate_code))
    height, width = image.shape[:2]
    if settings.steps and height * width <= self.refine_max_pixels:
      level = rate_code_lib.level_of_code(rate_code)
      lmbda = settings.lmbda
      if lmbda is None:  # the model's own trade-off (at this quality)
        lmbda = float(self.config.lmbda if level is None
                      else model_lib.lmbda_of_level(self.config, float(level)))
      y = refine_lib.refine(self.model, self.params, x, y, height, width, lmbda,
                            settings, self._refine_steps,
                            rate_level=None if level is None else float(level))
    return np.asarray(jnp.round(y)).astype(np.int64)

  def reconstruct(self, y_hat: np.ndarray, height: int, width: int,
                  rate_code: int | None = None) -> np.ndarray:
    """The decoder's image of a latent (1, h, w, C): uint8 (height, width, 3).
    Integer values (or the float means of progressive decoding) only: NaN/inf
    or values outside int32 raise LatentError. rate_code: a variable-rate
    model's (the stream's; None: that of ``codec.quality``)."""
    rate_code = self.rate_code() if rate_code is None else rate_code
    self.entropy_coder.check_rate_code(rate_code)
    y_hat = np.asarray(y_hat)
    if np.issubdtype(y_hat.dtype, np.floating):  # Progressive means: any finite value.
      if not np.all(np.isfinite(y_hat)):
        raise LatentError("The latent has non-finite values (NaN or inf).")
      check_latent(np.round(y_hat), self.config.latent_channels, batched=True)
    else:
      y_hat = check_latent(y_hat, self.config.latent_channels, batched=True)
    x = self._synthesize(self.params, jnp.asarray(y_hat, jnp.float32), self._level(rate_code))
    return np.asarray(x)[0, :height, :width]

  # --- images <-> bytes ---------------------------------------------------------
  def compress(self, image: np.ndarray, size_schedule=None,
               refine: "RefineSettings | int | None" = None,
               effort: int | None = None, quality=None, target_bpp=None,
               target_size=None) -> bytes:
    """uint8 (H, W, 3) -> bytes (header + range-coded y_hat + CRC).

    refine, effort: the encoder's latent refinement (see ``analyze``); both None:
      ``codec.refine``. Decoding does not depend on it.

    quality: a variable-rate model's quality, 0 (smallest) to 100 (best); None:
      ``model.DEFAULT_QUALITY``. target_bpp / target_size (bytes): instead of a
      quality, the quality whose stream comes nearest the target
      (``compress_to_target``, which also says whether it was reached; here a
      missed target only warns). At most one of the three.

    size_schedule: for a nested model (kind 'nested'), the model exit of each
      decode step: None (the model's default), 'full', 'fast', 'smallest' or a
      sequence / 'e,e,...' of exit indices whose exits never increase. The
      stream records it and ``decompress`` runs it. Other kinds take only None.
      ValueError for a schedule the model cannot run, or an image of more than
      ``max_pixels`` pixels (checked before any work).
    """
    if target_bpp is not None or target_size is not None:
      if quality is not None:
        raise ValueError("give a quality or a target (target_bpp / target_size), not both.")
      data, report = self.compress_to_target(image, target_bpp, target_size,
                                             size_schedule, refine, effort)
      if not report.reached:
        warnings.warn(report.message, stacklevel=2)
      return data
    image = check_image(image)
    self._check_pixels(*image.shape[:2])  # before the analysis
    self.entropy_model.resolve_size_schedule(size_schedule)
    rate_code = self.rate_code(quality)
    return self.compress_latent(self.analyze(image, refine, effort, quality),
                                *image.shape[:2], size_schedule, rate_code)

  def compress_to_target(self, image: np.ndarray, target_bpp=None, target_size=None,
                         size_schedule=None, refine=None, effort=None):
    """(bytes, ``rate_target.TargetReport``): the stream of the quality whose
    real size comes nearest ``target_bpp`` (bits per pixel of the image) or
    ``target_size`` (bytes of the whole stream), within
    ``rate_target.TOLERANCE`` where the model's range reaches it; the report
    says the quality, the size and whether the target was reached. Needs a
    variable-rate model; ValueError for a bad target."""
    return rate_target.compress_to_target(self, image, target_bpp, target_size,
                                          size_schedule, refine, effort)

  def compress_latent(self, y_hat: np.ndarray, height: int, width: int,
                      size_schedule=None, rate_code: int | None = None) -> bytes:
    """Codes an integer latent (1, h, w, C) of an image of ``height`` x ``width``
    (``compress`` calls this; public so that any latent can be coded) at a
    variable-rate model's ``rate_code`` (``rate_code(quality)``; None: that of
    ``codec.quality``)."""
    rate_code = self.rate_code() if rate_code is None else rate_code
    self.entropy_coder.check_rate_code(rate_code)
    self._check_pixels(height, width)
    y_hat = np.asarray(y_hat)
    expected = (1, *latent_size(height, width), self.config.latent_channels)
    if y_hat.shape != expected:
      raise ValueError(f"Latent of shape {y_hat.shape} does not fit a {height}x{width} "
                       f"image (expected {expected}).")
    y = check_latent(y_hat[0], self.config.latent_channels)[None]
    schedule = self.entropy_model.resolve_size_schedule(size_schedule)
    payload = self.entropy_coder.encode_tokens(y, schedule, rate_code)
    header = self.entropy_coder.header(height, width, bitstream.latent_crc(y),
                                       self.fingerprint, schedule, rate_code)
    return bitstream.pack(header, payload)

  def _check_pixels(self, height: int, width: int) -> None:
    if height * width > self.max_pixels:  # a stream the same limit would refuse to decode
      raise ValueError(f"The image is {width} x {height} ({height * width} pixels), more "
                       f"than codec.max_pixels ({self.max_pixels}): its stream would be "
                       "refused by a decoder with the same limit. Raise codec.max_pixels "
                       "(m2t compress --max-pixels) to code it anyway.")

  def read_header(self, data: bytes) -> bitstream.Header:
    """Unpacks ``data`` and checks that this codec's model wrote it."""
    return self._unpack(data)[0]

  def _unpack(self, data):
    """(header, payload) of an image stream of this model whose size is within
    ``max_pixels``; BitstreamError otherwise."""
    header, payload = self._unpack_any_size(data)
    bitstream.check_size(header.height * header.width, self.max_pixels, "pixels",
                         f"{header.width} x {header.height} image",
                         "codec.max_pixels (m2t decompress --max-pixels)")
    return header, payload

  def _unpack_any_size(self, data):
    try:
      return self.entropy_coder.unpack(data, self.fingerprint)
    except BitstreamError as original:
      try:  # a latent stream of this very entropy model? Then say so.
        self.entropy_coder.unpack(data)
      except BitstreamError:
        raise original from None
      raise BitstreamError(
          "This stream holds a latent written by EntropyCoder.compress, not an "
          "image; decode it with codec.entropy_coder.decompress.") from original

  def decompress(self, data: bytes, num_steps: int | None = None,
                 timings: dict | None = None) -> np.ndarray:
    """bytes -> uint8 (H, W, 3). Raises BitstreamError for any bad stream.

    num_steps: progressive decoding. Only the first k = num_steps steps are
      range decoded; every later element is replaced by its predicted mixture
      mean (the model's steps run on, fed with those means). k = S (or None) is
      the full decode; k = 0 decodes nothing.
    timings: optional dict that receives "steps_s", "range_coding_s" and
      "synthesis_s" (seconds) of this call.
    """
    header, payload = self._unpack(data)
    y_hat = self.entropy_coder.decode_tokens(
        payload, *latent_size(header.height, header.width), num_steps, timings, header)
    t0 = time.perf_counter()
    image = self.reconstruct(y_hat, header.height, header.width, header.rate_code)
    if timings is not None:
      timings["synthesis_s"] = time.perf_counter() - t0
    return image

  def decompress_latent(self, data: bytes, num_steps: int | None = None) -> np.ndarray:
    """bytes -> the decoded latent (1, h, w, C): int64, or float64 with predicted
    means for the steps past ``num_steps`` (see ``decompress``)."""
    header, payload = self._unpack(data)
    return self.entropy_coder.decode_tokens(
        payload, *latent_size(header.height, header.width), num_steps, header=header)

  def estimate(self, image: np.ndarray, size_schedule=None,
               refine: "RefineSettings | int | None" = None,
               effort: int | None = None, quality=None) -> dict:
    """The model's rate estimate and reconstruction of the y_hat that compress codes
    (with the same ``refine``, ``effort`` and ``quality``).

    Returns {"bits": float, "bpp": float, "reconstruction": uint8 (H, W, 3),
    "y_hat": int64 (1, h, w, C)}. Bits from the continuous bin masses (the
    training formula), not the quantised tables: one teacher-forced pass where
    the kind has one (M2T), else the decode loop's distributions (MT).
    """
    image = check_image(image)
    rate_code = self.rate_code(quality)
    return self.estimate_latent(self.analyze(image, refine, effort, quality),
                                *image.shape[:2], size_schedule, rate_code)

  def estimate_latent(self, y_hat: np.ndarray, height: int, width: int,
                      size_schedule=None, rate_code: int | None = None) -> dict:
    """``estimate`` of an integer latent (1, h, w, C) of a height x width image
    (at a variable-rate model's ``rate_code``; None: that of ``codec.quality``)."""
    rate_code = self.rate_code() if rate_code is None else rate_code
    bits = self.entropy_coder.estimate_bits(y_hat, size_schedule, rate_code)
    return {"bits": bits, "bpp": bits / (height * width), "y_hat": y_hat,
            "reconstruction": self.reconstruct(y_hat, height, width, rate_code)}
