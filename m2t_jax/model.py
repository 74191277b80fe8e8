"""The full model: E, rounding, an entropy model (any registered kind), D, RD loss.

Units: images are float on 0..255 (B, H, W, 3) with H, W multiples of 16 (pad
with ``pad_to_multiple``); E sees x / 255 and D's output is read as x_hat / 255, so
the MSE and PSNR are on the 0..255 scale (SPEC §1). Rates are in bits; bpp is
bits per pixel of the (unpadded) image area that was passed in.

Training (SPEC §1): y = E(x); the rate is the mixture's mass of the unit bin
around y + u, u ~ U(-1/2, 1/2), predicted from the context y_hat = round(y); D
and the context see y_hat through a straight-through estimator. Evaluation
(``train=False``) uses y_hat itself as the target, which is exactly what the range
coder pays up to table quantisation (M2T; MT's pass with a random mask is an
estimate, the codec's S steps are the real cost).

Variable rate (a config with ``variable_rate``; after Cui et al., "Asymmetric
Gained Deep Image Compression with Continuous Rate Adaptation", CVPR 2021): one
model for a range of trade-offs lambda in [lmbda_min, lmbda_max]. A *rate level*
t in [0, 1] (the user's quality Q = 100 t) stands for lambda(t) = lmbda_min *
(lmbda_max / lmbda_min)^t. E's latent is multiplied per channel by a gain vector
and D's input by an inverse gain vector, each interpolated in the log domain
between A learned anchor vectors at evenly spaced levels; the entropy model gets
t too (``entropy/base.py``, "Variable rate"). Training draws t ~ U(0, 1) per
example (lambda log-uniform over the range) and weighs each example's MSE by its
own lambda(t).
"""

import functools
import math
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from m2t_jax.entropy import base, embedding, patches, registry
from m2t_jax.evaluation import metrics
from m2t_jax.nn import precision
from m2t_jax.nn.elic import DOWNSCALE, ElicAnalysis, ElicSynthesis

# Re-exported: the quality a variable-rate model codes at when none is given.
from m2t_jax.coding.rate_code import DEFAULT_QUALITY  # noqa: E402,F401

# The training PSNRs (the model's and a frozen decoder's) floor the MSE here, so
# that a perfect crop gives a finite value that a mean over steps can hold.
MIN_MSE = 1e-10


def entropy_model_from_config(config: ml_collections.ConfigDict) -> base.EntropyModel:
  """The entropy model (a Flax module) of ``config.model``'s kind (registry)."""
  return registry.build(config)


def _is_count(value, least: int) -> bool:
  """An integer (not a bool) >= ``least``."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with a clear message for an impossible config: the fields
  every kind shares here, the kind's own in its ``validate_config``."""
  kind = registry.get(config.model)  # ValueError naming the known kinds
  precision.dtype_of(config.get("compute_dtype", "float32"))  # ValueError if unknown
  t = config.transformer
  # Sizes before anything divides by them: a zero would surface as a
  # ZeroDivisionError deep in Flax, a negative as a TypeError or IndexError.
  sizes = {"elic.num_filters": config.elic.num_filters,
           "latent_channels": config.latent_channels, "patch_size": config.patch_size,
           "transformer.num_layers": t.num_layers, "transformer.d_model": t.d_model,
           "transformer.num_heads": t.num_heads, "transformer.mlp_dim": t.mlp_dim}
  bad = [f"{name}={value!r}" for name, value in sizes.items() if not _is_count(value, 1)]
  if not _is_count(config.elic.num_res_blocks, 0):
    bad.append(f"elic.num_res_blocks={config.elic.num_res_blocks!r} (must be >= 0)")
  if bad:
    raise ValueError("Model sizes must be integers >= 1: " + ", ".join(bad) + ".")
  if t.d_model % t.num_heads:
    raise ValueError(f"transformer.d_model={t.d_model} must be divisible by "
                     f"transformer.num_heads={t.num_heads}.")
  if config.elic.num_filters % 2 or config.latent_channels % 2:
    raise ValueError("elic.num_filters and latent_channels must be even "
                     "(bottleneck blocks halve them).")
  if config.gmm.num_mixtures < 1 or not 0 < config.gmm.prob_floor < 1e-3:
    raise ValueError("gmm.num_mixtures must be >= 1 and 0 < gmm.prob_floor < 1e-3.")
  _validate_variable_rate(config)
  if config.gmm.table_radius < 1 or config.gmm.get("narrow_radius", 0) < 0:
    raise ValueError("gmm.table_radius must be >= 1 and gmm.narrow_radius >= 0.")
  if not 0 < config.gmm.get("wide_threshold", 0.5) < 1:
    raise ValueError("gmm.wide_threshold must be in (0, 1).")
  kind.model.validate_config(config)


def _validate_variable_rate(config) -> None:
  variable = config.get("variable_rate")
  if variable is None:
    return
  lo, hi, anchors = variable.get("lmbda_min"), variable.get("lmbda_max"), variable.get("anchors")
  if not _is_count(anchors, 2):
    raise ValueError(f"variable_rate.anchors must be an integer >= 2, got {anchors!r}.")
  if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in (lo, hi)) or not (
      0 < lo < hi):
    raise ValueError("variable_rate needs finite 0 < lmbda_min < lmbda_max, got "
                     f"lmbda_min={lo!r}, lmbda_max={hi!r}.")
  if config.get("train_part", "all") != "all":
    raise ValueError("A variable-rate model trains jointly (train_part='all'); "
                     f"train_part={config.train_part!r} is not supported for it.")


def is_variable_rate(config) -> bool:
  """Whether ``config`` describes a variable-rate model (``variable_rate``)."""
  return config.get("variable_rate") is not None


def lmbda_of_level(config, rate_level):
  """lambda (MSE on 0..255) of rate level(s) in [0, 1] of a variable-rate config:
  lmbda_min * (lmbda_max / lmbda_min)^t (numpy or jax, any shape)."""
  v = config.variable_rate
  return v.lmbda_min * (v.lmbda_max / v.lmbda_min) ** rate_level


def pad_to_multiple(image: jax.Array, multiple: int = DOWNSCALE) -> jax.Array:
  """Edge-pads (B, H, W, 3) at the bottom/right to multiples of ``multiple``."""
  _, h, w, _ = image.shape
  ph, pw = -h % multiple, -w % multiple
  return jnp.pad(image, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


def ste_round(y):
  """round(y) forward, identity backward (straight-through; training, refine.py)."""
  return y + jax.lax.stop_gradient(jnp.round(y) - y)


class CompressionModel(nn.Module):
  """E + quantiser + entropy model + D, configured by a (frozen) config."""
  config: ml_collections.FrozenConfigDict

  def setup(self):
    c = self.config
    self.analysis = ElicAnalysis(c.elic.num_filters, c.latent_channels,
                                 c.elic.num_res_blocks)
    self.synthesis = ElicSynthesis(c.elic.num_filters, c.elic.num_res_blocks)
    self.entropy_model = entropy_model_from_config(c)
    if is_variable_rate(c):
      v = c.variable_rate
      # Gains start at sqrt(lambda / config.lmbda) (an MSE-optimal uniform
      # quantiser's step scales as lambda^-1/2), the inverse gains at their
      # reciprocal: a model warm-started from one trained at config.lmbda starts
      # at its own operating point in the middle of the range.
      lmbdas = v.lmbda_min * (v.lmbda_max / v.lmbda_min) ** jnp.linspace(0, 1, v.anchors)
      log_gain = 0.5 * jnp.log(lmbdas / c.lmbda)[:, None] * jnp.ones(c.latent_channels)
      self.log_gain = self.param("log_gain", lambda _: log_gain)
      self.log_inverse_gain = self.param("log_inverse_gain", lambda _: -log_gain)

  def _compute(self, x: jax.Array) -> jax.Array:
    """x in the compute dtype (``nn/precision.py``): bfloat16 parameters then run
    the ELIC convolutions in bfloat16."""
    return x.astype(precision.dtype_of(self.config.get("compute_dtype", "float32")))

  def _gain(self, log_gains: jax.Array, rate_level) -> jax.Array:
    """(B, 1, 1, C): the gain vector of each example's rate level (B,), the
    anchors' log gains (A, C) interpolated linearly."""
    low, frac = embedding.anchor_position(self._levels(rate_level), log_gains.shape[0])
    log_gain = log_gains[low] * (1.0 - frac)[:, None] + log_gains[low + 1] * frac[:, None]
    return jnp.exp(log_gain)[:, None, None, :]

  def _levels(self, rate_level) -> jax.Array:
    """The rate levels (B,) float32 of a variable-rate model; ValueError when a
    fixed-rate model gets one or a variable-rate one none."""
    variable = is_variable_rate(self.config)
    if variable != (rate_level is not None):
      raise ValueError("A variable-rate model needs a rate level (B,) in [0, 1]; a "
                       "fixed-rate model takes none." if variable else
                       "This model has one rate: it takes no rate level.")
    return None if rate_level is None else jnp.asarray(rate_level, jnp.float32)

  def encode(self, image: jax.Array, rate_level=None) -> jax.Array:
    """(B, H, W, 3) on 0..255, H, W multiples of 16 -> y (B, H/16, W/16, C),
    float32. rate_level: (B,) in [0, 1] for a variable-rate model, else None."""
    y = self.analysis(self._compute(image / 255.0)).astype(jnp.float32)
    if self._levels(rate_level) is None:
      return y
    return y * self._gain(self.log_gain, rate_level)

  def decode(self, y_hat: jax.Array, rate_level=None) -> jax.Array:
    """(B, h, w, C) -> reconstruction (B, 16h, 16w, 3) on 0..255, unclipped,
    float32. rate_level: (B,) in [0, 1] for a variable-rate model, else None."""
    if self._levels(rate_level) is not None:
      y_hat = y_hat * self._gain(self.log_inverse_gain, rate_level)
    return self.synthesis(self._compute(y_hat)).astype(jnp.float32) * 255.0

  def latent_bits(self, y_hat: jax.Array, targets: jax.Array, rng=None,
                  train: bool = False, rate_level=None) -> jax.Array:
    """Estimated bits of each latent: (B,) float32.

    y_hat: (B, h, w, C), the rounded latent the entropy model reads as context;
    targets: (B, h, w, C), what it pays for (y_hat itself, or y + uniform noise in
    training); rng: the kind's own randomness (MT's masks), needed when train;
    rate_level: (B,) in [0, 1] for a variable-rate model, else None.
    """
    c = self.config
    b = y_hat.shape[0]
    tokens, valid = patches.to_patches(y_hat, c.patch_size)
    target_tokens, _ = patches.to_patches(targets, c.patch_size)
    levels = self._levels(rate_level)
    # A fixed-rate model's entropy model is called without a level, so kinds
    # written before variable rate (no rate_level argument) still run.
    extra = {}
    if levels is not None:  # each patch gets its image's level
      extra["rate_level"] = jnp.repeat(jnp.broadcast_to(levels, (b,)), tokens.shape[0] // b)
    rate = self.entropy_model.rate(tokens, target_tokens, rng=rng, train=train, **extra)
    token_bits = jnp.sum(rate.bits, axis=-1)  # (N, L)
    paid = rate.paid & valid
    # A kind may pay only some tokens (MT: the masked ones): scale each patch's
    # mean bits per paid token to all of its valid tokens, so that every kind
    # reports bits in the same units.
    num_valid = jnp.sum(valid, axis=-1)
    num_paid = jnp.maximum(jnp.sum(paid, axis=-1), 1)
    patch_bits = jnp.sum(token_bits * paid, axis=-1) * num_valid / num_paid
    return jnp.sum(patch_bits.reshape(b, -1), axis=-1)

  def __call__(self, image: jax.Array, rng=None, train: bool = False, rate_level=None):
    """Forward pass. image (B, H, W, 3) 0..255, H, W multiples of 16.

    rng: needed when train=True (uniform noise, and the entropy model's own
      randomness, e.g. MT's masks). rate_level: a variable-rate model's (B,) in
      [0, 1]; None draws U(0, 1) per example in training and takes
      ``DEFAULT_QUALITY`` otherwise. Returns a dict:
      bits (B,) estimated bits per image; bpp (B,); mse (B,) on 0..255;
      psnr (B,) dB; reconstruction (B, H, W, 3) on 0..255 (unclipped);
      y_hat (B, h, w, C) rounded latent; and for a variable-rate model
      rate_level (B,) and lmbda (B,), each example's lambda(t).
    """
    b, h_img, w_img, _ = image.shape
    if train and rng is None:
      raise ValueError("train=True needs an rng for the noise and the MT masks.")
    extra = {}
    if is_variable_rate(self.config):
      if rate_level is None and train:
        rng, level_rng = jax.random.split(rng)
        rate_level = jax.random.uniform(level_rng, (b,))
      elif rate_level is None:
        rate_level = jnp.full((b,), DEFAULT_QUALITY / 100.0)
      rate_level = jnp.broadcast_to(jnp.asarray(rate_level, jnp.float32), (b,))
      extra = {"rate_level": rate_level,
               "lmbda": lmbda_of_level(self.config, rate_level)}
    y = self.encode(image, rate_level)
    y_hat = ste_round(y)
    mask_rng = None
    if train:
      noise_rng, mask_rng = jax.random.split(rng)  # mask_rng: the kind's own
      targets = y + jax.random.uniform(noise_rng, y.shape, minval=-0.5, maxval=0.5)
    else:
      targets = y_hat
    bits = self.latent_bits(y_hat, targets, mask_rng, train, rate_level)
    x_hat = self.decode(y_hat, rate_level)
    mse = jnp.mean(jnp.square(x_hat - image), axis=(1, 2, 3))
    clipped = jnp.clip(x_hat, 0, 255)
    psnr = metrics.psnr_from_mse(jnp.mean(jnp.square(clipped - image), axis=(1, 2, 3)),
                                 min_mse=MIN_MSE)
    return {"bits": bits, "bpp": bits / (h_img * w_img), "mse": mse, "psnr": psnr,
            "reconstruction": x_hat, "y_hat": y_hat, **extra}


def rd_loss(outputs, lmbda) -> jax.Array:
  """Mean over the batch of bpp + lambda * MSE (0..255) (SPEC §1); lambda a
  scalar or one per example (B,)."""
  return jnp.mean(outputs["bpp"] + lmbda * outputs["mse"])


def example_lmbda(config, outputs, lmbda):
  """The lambda each example's loss weighs its MSE with: ``lmbda`` (the run's
  lambda at this step, ``lmbda_at_step``) for a fixed-rate model; for a
  variable-rate one each example's lambda(t) times the same warm-up factor."""
  if "lmbda" not in outputs:
    return lmbda
  return outputs["lmbda"] * (lmbda / config.lmbda)


def lmbda_at_step(config, step) -> jax.Array:
  """Lambda with the x10 warm-up over the first 15% of steps (SPEC §1)."""
  warm = step < config.lmbda_warmup_fraction * config.num_steps
  return jnp.where(warm, config.lmbda * config.lmbda_warmup_factor, config.lmbda)


def build_model(config) -> CompressionModel:
  """Validates ``config`` and returns the model."""
  validate_config(config)
  return CompressionModel(ml_collections.FrozenConfigDict(config))


def init_params(config, seed: int = 0):
  """Random parameters of ``build_model(config)``.

  The parameters' shapes and values do not depend on the image (each one's key
  is folded from its name), so the model is initialised on one DOWNSCALE x
  DOWNSCALE image: the smallest input, and one program for every caller of a
  config (training, ``Codec.from_config``, restore targets), which the
  persistent compilation cache then shares (compiling it takes 20-30 s for a
  tiny model on 2 CPU cores: one kernel per parameter's initialiser).
  """
  x = jnp.zeros((1, DOWNSCALE, DOWNSCALE, 3), jnp.float32)
  init = _jitted_init(ml_collections.FrozenConfigDict(config))
  return init(jax.random.key(seed), x)["params"]


@functools.lru_cache(maxsize=16)
def _jitted_init(config: ml_collections.FrozenConfigDict):
  """One jitted ``init`` per config and process. Jitted: op-by-op initialisation
  is several times slower. Kept: a new ``jax.jit`` per call would miss jax's
  in-memory cache and reload the executable (3-6 s) from the persistent cache."""
  return jax.jit(build_model(config).init)
