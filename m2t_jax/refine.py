"""Encoder-side latent refinement: a per-image rate-distortion search for y.

E maps an image to y in one pass, trained for the average training crop. For one
given image, a few gradient steps on y of the model's own RD loss

    L(y) = bits(round(y)) / (H W) + lambda * MSE(D(round(y)), x)
           [bits per pixel of the unpadded image; MSE on the 0..255 scale]

find a latent that costs fewer bits, decodes to a better image, or both
(content-adaptive optimisation: Campos et al., CVPR-W 2019; Yang et al.,
NeurIPS 2020). Rounding is straight-through (the decoder and the entropy model's
context see round(y), as in training); the loss that decides is the entropy
model's evaluation-mode estimate of round(y)'s bits (what the range coder pays,
up to table quantisation, for the one-pass kinds: M2T, GroupedMixer, nested;
MT's one pass is an estimate of its S-step cost), the gradient follows a smooth
surrogate of it (``rd_loss_fn``).

Only the encoder changes. The stream format, the decoder and "decoded image ==
D(y_hat)" are untouched: a refined stream decodes with any copy of the model,
and a decoder cannot tell it from an unrefined one. Refinement is deterministic
(same jitted steps, same device and software), so ``Codec.estimate`` and
``Codec.compress`` of one image agree on y_hat.

Adam with a cosine-decayed step size; the loss is not monotone in the steps
(a rounding flip can cost more bits than it saves distortion), so the latent
with the lowest loss seen is returned, E's own latent included: refinement
never returns a latent whose estimated loss is above E's.

Cost: one decoder and one entropy-model pass forward and backward per step, on
the whole image, so time and memory grow with the image, hence ``MAX_PIXELS``
(measured in docs/results/refinement.md).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from m2t_jax import model as model_lib

# Images above this many pixels are coded unrefined (E's latent, as with steps=0):
# the backward pass through D at full resolution needs several GiB per megapixel
# on CPU. Callers that want it anyway raise it (Codec.refine_max_pixels).
MAX_PIXELS = 4_194_304  # 2048 x 2048


RATE_TARGETS = ("continuous", "rounded")


@dataclasses.dataclass(frozen=True)
class RefineSettings:
  """steps: gradient steps (0: no refinement, E's rounded latent);
  learning_rate: Adam's initial step size in latent units, decayed to 0 by a
  cosine over ``steps``; lmbda: the RD trade-off (None: the model's training
  lambda, ``config.lmbda``); rate_target: what the rate's gradient pays for,
  'continuous' (y itself; the default) or 'rounded' (round(y), straight
  through); see ``rd_loss_fn``."""
  steps: int = 0
  learning_rate: float = 0.01
  lmbda: float | None = None
  rate_target: str = "continuous"

  def __post_init__(self):
    if not isinstance(self.steps, int) or self.steps < 0:
      raise ValueError(f"refinement steps must be an int >= 0, got {self.steps!r}.")
    if not self.learning_rate > 0:
      raise ValueError(f"refinement learning_rate must be > 0, got {self.learning_rate!r}.")
    if self.lmbda is not None and not self.lmbda > 0:
      raise ValueError(f"refinement lmbda must be > 0, got {self.lmbda!r}.")
    if self.rate_target not in RATE_TARGETS:
      raise ValueError(f"refinement rate_target must be one of {RATE_TARGETS}, "
                       f"got {self.rate_target!r}.")


def rd_loss_fn(model, params, image, height: int, width: int, lmbda: float,
               rate_target: str = "continuous"):
  """y -> (surrogate, loss) for one padded image (1, H', W', 3) on 0..255 of which
  the top-left ``height`` x ``width`` pixels are the image.

  loss: L(y) exactly, the bits of round(y) (what is coded); surrogate: what
  the gradient follows. rate_target 'continuous': the surrogate pays for y
  itself, the continuous value, in the mixture the context round(y) predicts,
  which pulls each element towards its mixture's mass; 'rounded': it pays for
  round(y) straight through, L itself, whose rate gradient only sees the
  mixture around the current integer (docs/results/refinement.md compares
  the two: ``experiments/refine_sweep.py``).
  """
  target = image[:, :height, :width]
  pixels = height * width

  def losses(y):
    y_hat = model_lib.ste_round(y)  # what D and the context see
    paid = y if rate_target == "continuous" else y_hat
    bits = model.apply({"params": params}, y_hat, paid,
                       method=model_lib.CompressionModel.latent_bits)[0]
    if rate_target == "rounded":  # the surrogate is L itself
      exact_bits = bits
    else:
      exact_bits = model.apply({"params": params}, jax.lax.stop_gradient(y_hat),
                               jax.lax.stop_gradient(y_hat),
                               method=model_lib.CompressionModel.latent_bits)[0]
    x_hat = model.apply({"params": params}, y_hat, method=model_lib.CompressionModel.decode)
    distortion = lmbda * jnp.mean(jnp.square(x_hat[:, :height, :width] - target))
    return bits / pixels + distortion, exact_bits / pixels + distortion

  return losses


@functools.lru_cache(maxsize=32)
def make_step(model, height: int, width: int, lmbda: float, rate_target: str):
  """(optimizer, step, loss): jitted step(params, image, y, opt_state, step_size)
  -> (y', opt_state', loss of y) and loss(params, image, y) -> loss of y. The
  step size is an argument, so one compilation serves every number of steps.
  Kept per (model, size, lambda, target) in the process (models hash by their
  config), so that every Codec of a model shares the compilations."""
  optimizer = optax.scale_by_adam()

  def step(params, image, y, opt_state, step_size):
    losses = rd_loss_fn(model, params, image, height, width, lmbda, rate_target)
    (_, value), grad = jax.value_and_grad(losses, has_aux=True)(y)
    direction, opt_state = optimizer.update(grad, opt_state, y)
    return y - step_size * direction, opt_state, value

  def loss_only(params, image, y):
    return rd_loss_fn(model, params, image, height, width, lmbda)(y)[1]

  return optimizer, jax.jit(step), jax.jit(loss_only)


def refine(model, params, image, y, height: int, width: int, lmbda: float,
           settings: RefineSettings, step_cache: dict | None = None):
  """The refined latent (float32, same shape as y; round it to code it).

  model, params: a CompressionModel and its parameters; image: (1, H', W', 3)
  float32 on 0..255, padded to multiples of 16; y: E's latent (1, H'/16, W'/16, C);
  height, width: the unpadded image's size. step_cache: a dict to keep the
  jitted step in across calls (one compilation per image shape and lambda).
  Returns E's y itself when settings.steps == 0.
  """
  if settings.steps == 0:
    return y
  key = (height, width, image.shape, lmbda, settings.rate_target)
  if step_cache is None or key not in step_cache:
    built = make_step(model, height, width, lmbda, settings.rate_target)
    if step_cache is not None:
      step_cache[key] = built
  else:
    built = step_cache[key]
  optimizer, step, loss_only = built
  step_sizes = optax.cosine_decay_schedule(settings.learning_rate, settings.steps)
  opt_state = optimizer.init(y)
  best, best_loss = y, float("inf")
  current = y
  for i in range(settings.steps):
    following, opt_state, value = step(params, image, current, opt_state,
                                       jnp.float32(step_sizes(i)))
    if float(value) < best_loss:  # value is the loss of `current`
      best, best_loss = current, float(value)
    current = following
  if float(loss_only(params, image, current)) < best_loss:  # the last update's latent
    best = current
  return best
