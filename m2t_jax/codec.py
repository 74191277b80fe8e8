"""Codec: images to real bytes and back.

    codec = Codec.from_config(get_config("m2t", "tiny"))   # random weights
    data = codec.compress(image)       # uint8 (H, W, 3), any H, W >= 1
    image2 = codec.decompress(data)    # uint8 (H, W, 3)

Compression pads the image (edge replication) to multiples of 16, runs E, rounds,
cuts the latent into w_T x w_T patches and codes all patches as one batch, group
by group, with the stepper of the model (``coding/steppers.py``), then writes the
container of ``coding/bitstream.py``. Decompression runs the same steps, feeding
back the decoded values, then D, then crops. The decoded image equals
``estimate(image)['reconstruction']`` bit for bit (same y_hat, same jitted D).

What to expect across machines: encoder and decoder must compute bit-identical
tables. That holds for the same model on the same backend and jax/XLA version
(and we test it across processes). Encoding on CPU and decoding on GPU, or across
XLA versions, runs different kernels whose float results may differ in the last
bit; such a stream then decodes to a wrong latent. The container cannot detect
this, so decode on the same kind of device and software that encoded.
"""

import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from m2t_jax import model as model_lib
from m2t_jax.coding import bitstream, range_coder, steppers
from m2t_jax.coding.bitstream import BitstreamError
from m2t_jax.entropy import gmm, patches

__all__ = ["BitstreamError", "Codec", "ImageError"]


_jit_bits = jax.jit(gmm.bits, static_argnums=2)


class ImageError(ValueError):
  """An input image the codec cannot take: not uint8 (H, W, 3), or too large."""


def _check_image(image) -> np.ndarray:
  if not isinstance(image, np.ndarray):
    raise ImageError(f"Expected a numpy array, got {type(image).__name__}.")
  if image.dtype != np.uint8:
    raise ImageError(f"Expected uint8 pixels on 0..255, got dtype {image.dtype}.")
  if image.ndim != 3 or image.shape[2] != 3:
    raise ImageError(f"Expected an RGB image of shape (H, W, 3), got {image.shape}; "
                     "convert greyscale/alpha images to RGB first.")
  h, w = image.shape[:2]
  if not (1 <= h <= bitstream.MAX_IMAGE_SIDE and 1 <= w <= bitstream.MAX_IMAGE_SIDE):
    raise ImageError(f"Image sides must be 1..{bitstream.MAX_IMAGE_SIDE}, got {h}x{w}.")
  return image


def _fingerprint(config, params) -> bytes:
  """16-byte digest of the config and every parameter's bytes."""
  digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  for path, leaf in leaves:
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.digest()[:bitstream.FINGERPRINT_BYTES]


class Codec:
  """A model and its parameters, with compress / decompress / estimate."""

  def __init__(self, config, params):
    self.config = ml_collections.FrozenConfigDict(config)
    self.model = model_lib.build_model(config)
    self.params = params
    self.fingerprint = _fingerprint(self.config, params)
    self.entropy_model = model_lib.entropy_model_from_config(self.config)
    self._encode = jax.jit(lambda p, x: jnp.round(self.model.apply(
        {"params": p}, model_lib.pad_to_multiple(x), method=model_lib.CompressionModel.encode)))
    self._synthesize = jax.jit(lambda p, y: jnp.clip(jnp.round(self.model.apply(
        {"params": p}, y, method=model_lib.CompressionModel.decode)), 0, 255).astype(jnp.uint8))

  # --- construction -----------------------------------------------------------
  @classmethod
  def from_config(cls, config, seed: int = 0) -> "Codec":
    """A randomly initialised model (tests, benchmarks)."""
    return cls(config, model_lib.init_params(config, seed, image_size=16))

  @classmethod
  def load(cls, path: str | None = None) -> "Codec":
    """A trained model.

    path: a folder written by ``save`` (config.json + params.npz); or None for
      the default model shipped in the package; or the name of a shipped model
      ('m2t', 'mt', or a name from ``m2t_jax/models/manifest.json``).
    Raises FileNotFoundError when there is no such model.
    """
    if path is None or not os.path.isdir(path):
      from m2t_jax import shipped  # noqa: PLC0415
      if path is None or path in ("m2t", "mt") or path in shipped.names():
        path = shipped.resolve(path)
    return cls(*load_params(path))

  def save(self, path: str) -> None:
    """Writes config.json and params.npz (parameters only) into folder ``path``."""
    save_params(path, self.config, self.params)

  @property
  def name(self) -> str:
    return f"{self.config.model}:{self.config.size} ({self.fingerprint.hex()[:12]})"

  # --- helpers ------------------------------------------------------------------
  def analyze(self, image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> the latent that compress codes: y_hat int64
    (1, ceil(H/16), ceil(W/16), C)."""
    image = _check_image(image)
    y = self._encode(self.params, jnp.asarray(image, jnp.float32)[None])
    return np.asarray(y).astype(np.int64)

  def reconstruct(self, y_hat: np.ndarray, height: int, width: int) -> np.ndarray:
    """The decoder's image of an integer latent: uint8 (height, width, 3)."""
    x = self._synthesize(self.params, jnp.asarray(y_hat, jnp.float32))
    return np.asarray(x)[0, :height, :width]

  def _stepper(self, num_patches, valid):
    return steppers.make_stepper(self.entropy_model, self.params["entropy_model"],
                                 self.config, num_patches, valid)

  def _header(self, height, width) -> bitstream.Header:
    s = self.config.schedule
    return bitstream.Header(self.config.model, s.order, s.num_steps, float(s.alpha),
                            height, width, self.fingerprint)

  # --- public API ---------------------------------------------------------------
  def compress(self, image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> bytes (header + range-coded y_hat + CRC)."""
    image = _check_image(image)
    return self.compress_latent(self.analyze(image), *image.shape[:2])

  def compress_latent(self, y_hat: np.ndarray, height: int, width: int) -> bytes:
    """Codes an integer latent (1, h, w, C) of an image of ``height`` x ``width``.

    ``compress`` calls this; it is public so that any latent (for example an
    extreme one) can be coded.
    """
    y_hat = np.asarray(y_hat)
    expected = (1, -(-height // 16), -(-width // 16), self.config.latent_channels)
    if y_hat.shape != expected:
      raise ValueError(f"Latent of shape {y_hat.shape} does not fit a {height}x{width} "
                       f"image (expected {expected}).")
    tokens, valid = patches.to_patches(jnp.asarray(y_hat, jnp.int32), self.config.patch_size)
    tokens, valid = np.asarray(tokens).astype(np.int64), np.asarray(valid)
    encoder = range_coder.new_encoder()
    self._run_steps(valid, tokens=tokens, encoder=encoder)
    return bitstream.pack(self._header(height, width), range_coder.finish(encoder))

  def read_header(self, data: bytes) -> bitstream.Header:
    """Unpacks ``data`` and checks that this codec's model wrote it."""
    header, _ = self._unpack(data)
    return header

  def _unpack(self, data):
    if not isinstance(data, (bytes, bytearray, memoryview)):
      raise BitstreamError(f"Expected bytes, got {type(data).__name__}.")
    header, payload = bitstream.unpack(bytes(data))
    if header.fingerprint != self.fingerprint:
      raise BitstreamError(
          f"This stream was written by another model ({header.model_kind}, order "
          f"{header.order}, {header.num_steps} steps, fingerprint "
          f"{header.fingerprint.hex()[:12]}); this codec is {self.name}. Decode it "
          "with the model that wrote it.")
    return header, payload

  def decompress(self, data: bytes, num_steps: int | None = None,
                 timings: dict | None = None) -> np.ndarray:
    """bytes -> uint8 (H, W, 3). Raises BitstreamError for any bad stream.

    num_steps: progressive decoding. Only the first k = num_steps groups are
      range decoded; every later token is replaced by its predicted mixture mean
      (the model's steps run on, fed with those means). k = S (or None) is the
      full decode; k = 0 decodes nothing.
    timings: optional dict that receives "steps_s", "range_coding_s" and
      "synthesis_s" (seconds) of this call.
    """
    header, payload = self._unpack(data)
    y_hat = self._decode_latent(header, payload, timings, num_steps)
    t0 = time.perf_counter()
    image = self.reconstruct(y_hat, header.height, header.width)
    if timings is not None:
      timings["synthesis_s"] = time.perf_counter() - t0
    return image

  def decompress_latent(self, data: bytes, num_steps: int | None = None) -> np.ndarray:
    """bytes -> the decoded latent (1, h, w, C): int64, or float64 with predicted
    means for the groups past ``num_steps`` (see ``decompress``)."""
    header, payload = self._unpack(data)
    return self._decode_latent(header, payload, num_steps=num_steps)

  def _decode_latent(self, header, payload, timings=None, num_steps=None) -> np.ndarray:
    total = self.config.schedule.num_steps
    if num_steps is not None and not 0 <= num_steps <= total:
      raise ValueError(f"num_steps must be in 0..{total}, got {num_steps}.")
    num_steps = total if num_steps is None else num_steps
    h, w = -(-header.height // 16), -(-header.width // 16)
    _, valid = patches.to_patches(jnp.zeros((1, h, w, 1), jnp.int32), self.config.patch_size)
    try:
      decoder = range_coder.new_decoder(payload)
      tokens = self._run_steps(np.asarray(valid), decoder=decoder, timings=timings,
                               num_coded_steps=num_steps)
    except range_coder.RangeCoderError as e:
      raise BitstreamError(f"Corrupted payload: {e}") from e
    if num_steps == total and not decoder.maybe_exhausted():
      # A valid stream ends exactly where its last group does.
      raise BitstreamError("Corrupted payload: data left over after the last group.")
    return np.asarray(patches.from_patches(tokens, 1, h, w, self.config.patch_size))

  def _run_steps(self, valid, tokens=None, encoder=None, decoder=None, bits_out=None,
                 timings=None, num_coded_steps=None):
    """Codes (encoder), decodes (decoder) or estimates (bits_out) all groups.

    valid (N, L) bool; tokens (N, L, C) int64 true values (encoder / estimate).
    timings: optional dict; seconds spent in the jitted steps (model + tables,
    including the transfer to the host) and in range coding are added to its
    "steps_s" and "range_coding_s".
    num_coded_steps: decoder only; groups from this step on are not decoded but
    filled with their predicted mixture means (progressive decoding).
    Returns the token values (N, L, C) that were coded or decoded: int64, or
    float64 when some groups hold predicted means.
    """
    n, length = valid.shape
    c = self.config.latent_channels
    num_steps = self.config.schedule.num_steps
    coded_steps = num_steps if num_coded_steps is None else num_coded_steps
    dtype = np.int64 if coded_steps == num_steps else np.float64
    values = np.zeros((n, length, c), dtype) if tokens is None else tokens
    coded = ~valid  # padded cells are known and never coded
    stepper = self._stepper(n, valid)
    rows = np.arange(n)[:, None]
    timings = {} if timings is None else timings
    for key in ("steps_s", "range_coding_s"):
      timings.setdefault(key, 0.0)
    for i in range(stepper.num_steps):
      t0 = time.perf_counter()
      cells, centers, pmf, mixture = stepper.predict(i)
      todo = ~coded[rows, cells]  # (N, g); cells already known are skipped
      if i >= coded_steps:  # progressive decoding: the predicted mean stands in
        group = values[rows, cells]
        group[todo] = np.asarray(gmm.mixture_mean(mixture))[todo]
        values[rows, cells] = group
      elif encoder is not None or decoder is not None:
        # Elements (N, g, C) in C order: first those with narrow tables, then
        # the few that need wide ones (steppers.wide_elements), as two batches.
        centers, pmf = np.asarray(centers), np.asarray(pmf)
        elems = np.broadcast_to(todo[..., None], centers.shape)
        wide = steppers.wide_elements(pmf, elems, self.config)
        narrow = elems & ~wide
        wide_pmf = (steppers.wide_tables(mixture, np.flatnonzero(wide), self.config)
                    if wide.any() else None)
        t1 = time.perf_counter()
        timings["steps_s"] += t1 - t0
        group = values[rows, cells]
        if encoder is not None:
          range_coder.encode_group(encoder, group[narrow], centers[narrow], pmf[narrow])
          if wide_pmf is not None:
            range_coder.encode_group(encoder, group[wide], centers[wide], wide_pmf)
        else:
          group[narrow] = range_coder.decode_group(decoder, centers[narrow], pmf[narrow])
          if wide_pmf is not None:
            group[wide] = range_coder.decode_group(decoder, centers[wide], wide_pmf)
          values[rows, cells] = group
        timings["range_coding_s"] += time.perf_counter() - t1
      if bits_out is not None:
        elem_bits = np.asarray(_jit_bits(mixture, jnp.asarray(values[rows, cells], jnp.float32),
                                         self.config.gmm.prob_floor))
        bits_out.append(float(elem_bits[todo].sum()))
      coded[rows, cells] = True
      stepper.update(i, cells, values[rows, cells])
    return values

  def estimate(self, image: np.ndarray) -> dict:
    """The model's rate estimate and reconstruction of the y_hat that compress codes.

    Returns {"bits": float, "bpp": float, "reconstruction": uint8 (H, W, 3),
    "y_hat": int64 (1, h, w, C)}. M2T: bits from one teacher-forced pass. MT has
    no teacher-forced pass; its bits come from the S decode passes, with the
    distributions the coder uses. Both use the continuous bin masses (the
    training formula), not the quantised tables.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    y_hat = self.analyze(image)
    tokens, valid = patches.to_patches(jnp.asarray(y_hat, jnp.float32), self.config.patch_size)
    if self.config.model == "m2t":
      mixture = self._teacher_forced(self.params, tokens)
      elem = _jit_bits(mixture, tokens, self.config.gmm.prob_floor)
      bits = float(jnp.sum(elem * valid[..., None]))
    else:
      per_step = []
      self._run_steps(np.asarray(valid), tokens=np.asarray(tokens).astype(np.int64),
                      bits_out=per_step)
      bits = float(sum(per_step))
    return {"bits": bits, "bpp": bits / (height * width), "y_hat": y_hat,
            "reconstruction": self.reconstruct(y_hat, height, width)}

  @property
  def _teacher_forced(self):
    if not hasattr(self, "_tf_fn"):
      self._tf_fn = jax.jit(
          lambda p, t: self.entropy_model.apply({"params": p["entropy_model"]}, t))
    return self._tf_fn

  def timed_roundtrip(self, image: np.ndarray) -> dict:
    """Compress and decompress ``image``; returns bytes, seconds and the decoded image."""
    t0 = time.perf_counter()
    data = self.compress(image)
    t1 = time.perf_counter()
    decoded = self.decompress(data)
    t2 = time.perf_counter()
    return {"data": data, "decoded": decoded, "encode_s": t1 - t0, "decode_s": t2 - t1}


# --- parameters on disk --------------------------------------------------------
def save_params(path: str, config, params, dtype=None) -> None:
  """Folder with config.json and params.npz (flattened '/'-joined keys).

  dtype: storage type of the parameters (e.g. np.float16 to halve the size);
  ``load_params`` always returns float32.
  """
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(ml_collections.ConfigDict(config).to_dict(), f, indent=1, sort_keys=True)
  flat = {"/".join(str(k.key) for k in p): np.asarray(v, dtype=dtype)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(os.path.join(path, "params.npz"), **flat)


def load_params(path: str):
  """Inverse of ``save_params``: (ConfigDict, params)."""
  config_path = os.path.join(path, "config.json")
  params_path = os.path.join(path, "params.npz")
  if not (os.path.isfile(config_path) and os.path.isfile(params_path)):
    raise FileNotFoundError(f"{path!r} is not a saved m2t_jax model (it needs "
                            "config.json and params.npz).")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  params: dict = {}
  with np.load(params_path) as flat:
    for key in flat.files:
      node = params
      *parents, leaf = key.split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = jnp.asarray(flat[key], jnp.float32)
  expected = jax.eval_shape(lambda: model_lib.init_params(config, 0, image_size=16))
  if jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(params):
    raise ValueError(f"The parameters in {path!r} do not match its config.json.")
  return config, params
