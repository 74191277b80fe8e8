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
"""

import functools
import numbers

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from m2t_jax.entropy import base, patches, registry
from m2t_jax.evaluation import metrics
from m2t_jax.nn import precision
from m2t_jax.nn.elic import DOWNSCALE, ElicAnalysis, ElicSynthesis

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
  if config.gmm.table_radius < 1 or config.gmm.get("narrow_radius", 0) < 0:
    raise ValueError("gmm.table_radius must be >= 1 and gmm.narrow_radius >= 0.")
  if not 0 < config.gmm.get("wide_threshold", 0.5) < 1:
    raise ValueError("gmm.wide_threshold must be in (0, 1).")
  kind.model.validate_config(config)


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

  def _compute(self, x: jax.Array) -> jax.Array:
    """x in the compute dtype (``nn/precision.py``): bfloat16 parameters then run
    the ELIC convolutions in bfloat16."""
    return x.astype(precision.dtype_of(self.config.get("compute_dtype", "float32")))

  def encode(self, image: jax.Array) -> jax.Array:
    """(B, H, W, 3) on 0..255, H, W multiples of 16 -> y (B, H/16, W/16, C),
    float32."""
    return self.analysis(self._compute(image / 255.0)).astype(jnp.float32)

  def decode(self, y_hat: jax.Array) -> jax.Array:
    """(B, h, w, C) -> reconstruction (B, 16h, 16w, 3) on 0..255, unclipped,
    float32."""
    return self.synthesis(self._compute(y_hat)).astype(jnp.float32) * 255.0

  def latent_bits(self, y_hat: jax.Array, targets: jax.Array, rng=None,
                  train: bool = False) -> jax.Array:
    """Estimated bits of each latent: (B,) float32.

    y_hat: (B, h, w, C), the rounded latent the entropy model reads as context;
    targets: (B, h, w, C), what it pays for (y_hat itself, or y + uniform noise in
    training); rng: the kind's own randomness (MT's masks), needed when train.
    """
    c = self.config
    b = y_hat.shape[0]
    tokens, valid = patches.to_patches(y_hat, c.patch_size)
    target_tokens, _ = patches.to_patches(targets, c.patch_size)
    rate = self.entropy_model.rate(tokens, target_tokens, rng=rng, train=train)
    token_bits = jnp.sum(rate.bits, axis=-1)  # (N, L)
    paid = rate.paid & valid
    # A kind may pay only some tokens (MT: the masked ones): scale each patch's
    # mean bits per paid token to all of its valid tokens, so that every kind
    # reports bits in the same units.
    num_valid = jnp.sum(valid, axis=-1)
    num_paid = jnp.maximum(jnp.sum(paid, axis=-1), 1)
    patch_bits = jnp.sum(token_bits * paid, axis=-1) * num_valid / num_paid
    return jnp.sum(patch_bits.reshape(b, -1), axis=-1)

  def __call__(self, image: jax.Array, rng=None, train: bool = False):
    """Forward pass. image (B, H, W, 3) 0..255, H, W multiples of 16.

    rng: needed when train=True (uniform noise, and the entropy model's own
      randomness, e.g. MT's masks). Returns a dict:
      bits (B,) estimated bits per image; bpp (B,); mse (B,) on 0..255;
      psnr (B,) dB; reconstruction (B, H, W, 3) on 0..255 (unclipped);
      y_hat (B, h, w, C) rounded latent.
    """
    _, h_img, w_img, _ = image.shape
    y = self.encode(image)
    y_hat = ste_round(y)
    mask_rng = None
    if train:
      if rng is None:
        raise ValueError("train=True needs an rng for the noise and the MT masks.")
      noise_rng, mask_rng = jax.random.split(rng)  # mask_rng: the kind's own
      targets = y + jax.random.uniform(noise_rng, y.shape, minval=-0.5, maxval=0.5)
    else:
      targets = y_hat
    bits = self.latent_bits(y_hat, targets, mask_rng, train)
    x_hat = self.decode(y_hat)
    mse = jnp.mean(jnp.square(x_hat - image), axis=(1, 2, 3))
    clipped = jnp.clip(x_hat, 0, 255)
    psnr = metrics.psnr_from_mse(jnp.mean(jnp.square(clipped - image), axis=(1, 2, 3)),
                                 min_mse=MIN_MSE)
    return {"bits": bits, "bpp": bits / (h_img * w_img), "mse": mse, "psnr": psnr,
            "reconstruction": x_hat, "y_hat": y_hat}


def rd_loss(outputs, lmbda: float) -> jax.Array:
  """Mean over the batch of bpp + lambda * MSE (0..255) (SPEC §1)."""
  return jnp.mean(outputs["bpp"] + lmbda * outputs["mse"])


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
