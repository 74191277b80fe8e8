"""One training update (under ``jax.pmap``) and the evaluation of a model.

The train step runs on every local device with its own slice of the batch;
``lax.pmean`` over the axis ``AXIS`` averages gradients and metrics, so every
device applies the same update and the replicas stay identical.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2t_jax import model as model_lib
from m2t_jax.coding import rate_code
from m2t_jax.coding.entropy_coder import EntropyCoder
from m2t_jax.entropy import registry
from m2t_jax.nn import precision
from m2t_jax.train import frozen
from m2t_jax.train.optim import learning_rate_at_step, make_optimizer
from m2t_jax.train.state import TrainState

AXIS = "batch"  # pmap axis name


def make_train_step(config, model=None, optimizer=None):
  """The per-device step, to run under ``jax.pmap(..., axis_name=AXIS,
  in_axes=(0, 0, None))``.

  The step maps (state, images, key) -> (state, metrics):
    state: this device's TrainState.
    images: uint8 (B_dev, H, W, 3), this device's crops (0..255); with
      config.train_part 'entropy' or 'decoder', that part's batch instead
      (``train.frozen``).
    key: the run's PRNG key, the same on every device (in_axes None). Device d
      draws from ``fold_in(fold_in(key, step), d)``, d the global device index:
      no random state to carry or checkpoint, and a resumed run draws the same.
    metrics: () float32 each, means over all devices: loss (bpp + lambda * MSE),
      bpp (estimated bits per pixel), mse (0..255 scale), psnr (dB) (those the
      part computes: 'entropy' has no mse/psnr, 'decoder' no bpp), lmbda, lr,
      grad_norm (global L2 norm before clipping); finite () bool: whether the
      update was applied.
  A step whose loss or gradient norm is not finite keeps params and optimizer
  state (the step counter advances, num_skipped counts it).
  """
  model = model or model_lib.build_model(config)
  optimizer = optimizer or make_optimizer(config)
  part_loss = (_joint_loss(model) if frozen.part(config) == "all"
               else frozen.loss_fn(config, model))
  compute_dtype = config.get("compute_dtype", "float32")

  def loss_fn(params, *args):
    # Mixed precision: the float32 parameters are what is differentiated and
    # updated; the model computes with a cast copy (nn/precision.py).
    return part_loss(precision.cast_params(params, compute_dtype), *args)

  def train_step(state: TrainState, images, key):
    step = state.step
    rng = jax.random.fold_in(jax.random.fold_in(key, step), jax.lax.axis_index(AXIS))
    lmbda = model_lib.lmbda_at_step(config, step)

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, images, rng, lmbda)
    grads = jax.lax.pmean(grads, AXIS)
    loss = jax.lax.pmean(loss, AXIS)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    direction, opt_state = optimizer.update(grads, state.opt_state, state.params)
    lr = learning_rate_at_step(config, step)
    params = optax.apply_updates(state.params, jax.tree.map(lambda d: -lr * d, direction))
    # Identical on every device (loss and grads are pmean-ed), so the replicas
    # stay in sync when a step is skipped.
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(
        step=step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        num_skipped=state.num_skipped + (~finite).astype(jnp.int32))
    mean = lambda v: jax.lax.pmean(jnp.mean(v), AXIS)
    metrics = {"loss": loss, **{k: mean(v) for k, v in out.items()}, "lmbda": lmbda,
               "lr": lr, "grad_norm": grad_norm, "finite": finite}
    return new_state, metrics

  return train_step


def _joint_loss(model):
  """(params, images uint8 (B, H, W, 3), rng, lmbda) -> (RD loss, per-image bpp,
  mse, psnr): the joint training of SPEC §1 (a variable-rate model: each example
  at its own drawn lambda, ``model.example_lmbda``)."""
  def loss_fn(params, images, rng, lmbda):
    noise_rng, dropout_rng = jax.random.split(rng)
    out = model.apply({"params": params}, images.astype(jnp.float32), noise_rng,
                      train=True, rngs={"dropout": dropout_rng})
    lmbda = model_lib.example_lmbda(model.config, out, lmbda)
    return model_lib.rd_loss(out, lmbda), {k: out[k] for k in ("bpp", "mse", "psnr")}
  return loss_fn


def one_pass_is_schedule(config) -> bool:
  """Whether ``config.model``'s one-pass rate is the rate of its coding schedule
  (the entropy model class's ``one_pass_rate``: M2T yes, MT no)."""
  return bool(registry.get(config.model).model.one_pass_rate)


def make_eval_step(config, model=None):
  """jit-ed (params, images uint8 (B, H, W, 3)) -> per-image one-pass estimated
  bpp, mse (0..255 scale) and psnr (dB), each (B,) float32; ``model(train=False)``.
  For a kind whose one pass is not its schedule (``one_pass_is_schedule``) also
  y_hat (B, H/16, W/16, C) float32, the rounded latent, for ``evaluate``."""
  model = model or model_lib.build_model(config)
  keys = ("bpp", "mse", "psnr") + (() if one_pass_is_schedule(config) else ("y_hat",))

  @jax.jit
  def eval_step(params, images):
    out = model.apply({"params": params}, images.astype(jnp.float32), train=False)
    return {k: out[k] for k in keys}

  return eval_step


def evaluate(config, eval_step, params, images: np.ndarray) -> dict:
  """Means over ``images`` (uint8 (N, H, W, 3)) of the estimated bpp, MSE and
  PSNR, and loss = bpp + config.lmbda * MSE; also num_images = N.

  bpp is always the rate of the model's coding schedule, the one
  ``Codec.estimate`` reports: the one-pass rate where that equals the schedule's
  (M2T), else the decode loop's (MT's S steps, ``schedule_bits``); the latter
  kinds also get bpp_one_pass, the one-pass rate (MT: every token masked, S = 1).

  Batches of config.eval_batch_size; the last one is padded with copies of its
  first image, so that one compilation serves every batch (the copies' results
  are dropped).
  """
  b = config.eval_batch_size
  n = len(images)
  results = []
  for start in range(0, n, b):
    batch = images[start:start + b]
    if len(batch) < b:
      batch = np.concatenate([batch, np.repeat(batch[:1], b - len(batch), 0)])
    results.append(jax.device_get(eval_step(params, batch)))
  per_image = {k: np.concatenate([r[k] for r in results])[:n] for k in results[0]}
  out = {k: float(np.mean(per_image[k])) for k in ("bpp", "mse", "psnr")}
  if "y_hat" in per_image:
    out["bpp_one_pass"] = out["bpp"]
    bits = schedule_bits(config, params["entropy_model"], per_image["y_hat"], b)
    # Every image has H * W pixels: the mean of the per-image bpp.
    out["bpp"] = bits / (n * images.shape[1] * images.shape[2])
  out["loss"] = out["bpp"] + config.lmbda * out["mse"]
  out["num_images"] = n
  return out


def schedule_bits(config, entropy_params, y_hat: np.ndarray, chunk: int) -> float:
  """Total bits of the latents y_hat (N, h, w, C) (integer-valued) under the
  coding schedule: ``EntropyCoder.estimate_bits``, i.e. the decode loop's
  distributions, as ``Codec.estimate`` computes them.

  ``chunk`` images at a time are laid side by side along the width into one
  latent: h and w are multiples of the patch size, so its patches are exactly
  the images' own patches (and patches are coded independently), while the
  decode loop runs once for the chunk instead of once per image.
  """
  n, h, w, _ = y_hat.shape
  if h % config.patch_size or w % config.patch_size:
    raise ValueError(f"Latents of {h}x{w} are not whole {config.patch_size}x"
                     f"{config.patch_size} patches.")
  coder = EntropyCoder(config, entropy_params)
  # rint: the straight-through rounding y + (round(y) - y) may miss the integer
  # by an ulp.
  y_hat = np.rint(y_hat).astype(np.int64)
  # A variable-rate model is evaluated at the default quality (the model's
  # forward pass without a rate level): the same level here.
  code = (rate_code.code_of_quality(rate_code.DEFAULT_QUALITY)
          if coder.variable_rate else None)
  return sum(coder.estimate_bits(np.concatenate(list(y_hat[i:i + chunk]), axis=1)[None],
                                 rate_code=code)
             for i in range(0, n, chunk))
