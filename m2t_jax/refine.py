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
surrogate of it (``surrogate_fn``).

Only the encoder changes. The stream format, the decoder and "decoded image ==
D(y_hat)" are untouched: a refined stream decodes with any copy of the model,
and a decoder cannot tell it from an unrefined one. Refinement is deterministic
(one jitted program, same device and software), so ``Codec.estimate`` and
``Codec.compress`` of one image agree on y_hat.

The search is compiled once per image shape and lambda (``make_refiner``): Adam
with a cosine-decayed step size whose step count and size are arguments (every
effort level shares the compilations). Nothing is read back to the host until
the end. Two ways to run the steps give the same latent (``LOOPS``): 'compiled',
one ``lax.fori_loop`` program (no dispatch per step: accelerators), and
'stepped', one jitted step dispatched per step from Python, asynchronously (on
XLA's CPU backend the convolutions of a while-loop body run several times slower
than the same step on its own, docs/results/effort.md; the default there). Each
step pays for the surrogate's forward and backward pass only; the exact loss L,
which needs its own entropy-model pass, is computed once at the end, for three
candidates: E's own latent, the last one, and the one of the lowest surrogate
loss seen. The loss is not monotone in the steps (a
rounding flip can cost more bits than it saves distortion), and E's latent is a
candidate, so refinement never returns a latent whose estimated loss is above E's.

Effort levels (``EFFORTS``, ``RefineSettings.for_effort``) name a few settings
from 0 (E's latent, no search) upwards; ``m2t compress --effort`` picks one.

Cost: one decoder and one entropy-model pass forward and backward per step, on
the whole image, so time and memory grow with the image, hence ``MAX_PIXELS``
(measured in docs/results/refinement.md and docs/results/effort.md).
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2t_jax import model as model_lib

# Images above this many pixels are coded unrefined (E's latent, as with steps=0):
# the backward pass through D at full resolution needs several GiB per megapixel
# on CPU. Callers that want it anyway raise it (Codec.refine_max_pixels).
MAX_PIXELS = 4_194_304  # 2048 x 2048


RATE_TARGETS = ("continuous", "rounded")
LOOPS = ("stepped", "compiled")


def default_loop() -> str:
  """'stepped' on JAX's CPU backend, 'compiled' on accelerators (see the module
  docstring)."""
  return "stepped" if jax.default_backend() == "cpu" else "compiled"


@dataclasses.dataclass(frozen=True)
class RefineSettings:
  """steps: gradient steps (0: no refinement, E's rounded latent);
  learning_rate: Adam's initial step size in latent units, decayed to 0 by a
  cosine over ``steps``; lmbda: the RD trade-off (None: the model's training
  lambda, ``config.lmbda``); rate_target: what the rate's gradient pays for,
  'continuous' (y itself; the default) or 'rounded' (round(y), straight
  through); see ``surrogate_fn``; loop: how the steps run, one of ``LOOPS`` (None:
  ``default_loop()``; the latent is the same)."""
  steps: int = 0
  learning_rate: float = 0.01
  lmbda: float | None = None
  rate_target: str = "continuous"
  loop: str | None = None

  def __post_init__(self):
    if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
      raise ValueError(f"refinement steps must be an int >= 0, got {self.steps!r}.")
    if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
      raise ValueError(f"refinement learning_rate must be finite and > 0, got "
                       f"{self.learning_rate!r}.")
    if self.lmbda is not None and (not self.lmbda > 0 or not math.isfinite(self.lmbda)):
      raise ValueError(f"refinement lmbda must be finite and > 0, got {self.lmbda!r}.")
    if self.rate_target not in RATE_TARGETS:
      raise ValueError(f"refinement rate_target must be one of {RATE_TARGETS}, "
                       f"got {self.rate_target!r}.")
    if self.loop is not None and self.loop not in LOOPS:
      raise ValueError(f"refinement loop must be None or one of {LOOPS}, got {self.loop!r}.")

  @classmethod
  def for_effort(cls, effort: int, lmbda: float | None = None) -> "RefineSettings":
    """The settings of effort level ``effort`` (``EFFORTS``), with ``lmbda``
    (None: the model's). ValueError for anything but an int in 0..MAX_EFFORT."""
    return dataclasses.replace(EFFORTS[check_effort(effort)], lmbda=lmbda)


# Effort level -> its search: more steps cost proportionally more encoding time
# (one forward and backward pass of D and of the entropy model each). Fewer steps
# take larger steps so that the latent can move as far: the cosine-decayed steps
# of size s add up to s * steps / 2 latent units at most. The highest level is the
# earlier command-line default (30 steps at 0.01).
EFFORTS = (
    RefineSettings(steps=0),                        # E's latent: the fastest
    RefineSettings(steps=3, learning_rate=0.04),
    RefineSettings(steps=10, learning_rate=0.02),
    RefineSettings(steps=30, learning_rate=0.01),
)
MAX_EFFORT = len(EFFORTS) - 1
DEFAULT_EFFORT = 1  # what m2t compress and m2t eval use unless told


def check_effort(effort) -> int:
  """``effort`` as an int if it is an integer in 0..MAX_EFFORT; ValueError otherwise
  (bools, floats and strings included)."""
  if isinstance(effort, bool) or not isinstance(effort, int | np.integer) or not (
      0 <= int(effort) <= MAX_EFFORT):
    raise ValueError(f"effort must be an integer from 0 (no refinement, fastest) to "
                     f"{MAX_EFFORT} (slowest), got {effort!r}.")
  return int(effort)

def resolve_settings(refine, default: RefineSettings, effort=None) -> RefineSettings:
  """The settings a call asks for: refine None -> ``default``; an int -> ``default``
  with that many steps; a RefineSettings as is; or, with ``effort`` given (and
  refine None), that level's settings with the default's lambda. ValueError for
  a bad effort or both given; TypeError for another refine."""
  if effort is not None:
    if refine is not None:
      raise ValueError("give refine or effort, not both.")
    return RefineSettings.for_effort(effort, default.lmbda)
  if refine is None:
    return default
  if isinstance(refine, RefineSettings):
    return refine
  if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)):
    raise TypeError(f"refine must be None, an int or RefineSettings, got {refine!r}.")
  return dataclasses.replace(default, steps=int(refine))


def _parts(model, params, image, height: int, width: int, lmbda: float,
           rate_level: float | None = None):
  """(bits_per_pixel(y_hat, paid), distortion(y_hat)) of one padded image;
  rate_level: a variable-rate model's, else None."""
  target = image[:, :height, :width]
  pixels = height * width
  level = None if rate_level is None else jnp.full((1,), rate_level, jnp.float32)

  def bits_per_pixel(y_hat, paid):
    return model.apply({"params": params}, y_hat, paid, rate_level=level,
                       method=model_lib.CompressionModel.latent_bits)[0] / pixels

  def distortion(y_hat):
    x_hat = model.apply({"params": params}, y_hat, level,
                        method=model_lib.CompressionModel.decode)
    return lmbda * jnp.mean(jnp.square(x_hat[:, :height, :width] - target))

  return bits_per_pixel, distortion


def loss_fn(model, params, image, height: int, width: int, lmbda: float,
            rate_level: float | None = None):
  """y -> L(y), the RD loss of round(y) (what is coded), for one padded image
  (1, H', W', 3) on 0..255 of which the top-left ``height`` x ``width`` pixels are
  the image; y: (1, H'/16, W'/16, C); rate_level: a variable-rate model's."""
  bits_per_pixel, distortion = _parts(model, params, image, height, width, lmbda,
                                      rate_level)

  def loss(y):
    y_hat = jnp.round(y)
    return bits_per_pixel(y_hat, y_hat) + distortion(y_hat)

  return loss


def surrogate_fn(model, params, image, height: int, width: int, lmbda: float,
                 rate_target: str = "continuous", rate_level: float | None = None):
  """y -> the loss whose gradient refinement follows (same image layout as
  ``loss_fn``). D and the entropy model's context see round(y), straight through.
  rate_target 'continuous': the rate paid is that of y itself, the continuous
  value, in the mixture the context round(y) predicts, which pulls each element
  towards its mixture's mass; 'rounded': it pays for round(y), so the surrogate
  is L itself, whose rate gradient only sees the mixture around the current
  integer (docs/results/refinement.md compares the two)."""
  bits_per_pixel, distortion = _parts(model, params, image, height, width, lmbda,
                                      rate_level)

  def surrogate(y):
    y_hat = model_lib.ste_round(y)
    return bits_per_pixel(y_hat, y if rate_target == "continuous" else y_hat) + \
        distortion(y_hat)

  return surrogate


def rd_loss_fn(model, params, image, height: int, width: int, lmbda: float,
               rate_target: str = "continuous"):
  """y -> (surrogate, loss): ``surrogate_fn`` and ``loss_fn`` of y together."""
  surrogate = surrogate_fn(model, params, image, height, width, lmbda, rate_target)
  loss = loss_fn(model, params, image, height, width, lmbda)
  return lambda y: (surrogate(y), loss(y))


def step_size(learning_rate, steps, i):
  """Adam's step size at step i of ``steps``: a cosine from ``learning_rate`` down
  towards 0 (``optax.cosine_decay_schedule``; here with a traced step count)."""
  return 0.5 * learning_rate * (1 + jnp.cos(jnp.pi * i / steps))


class Refiner(NamedTuple):
  """The jitted parts of a refinement (``make_refiner``). A carry is (current,
  opt_state, best, best_value): the latent the next step starts from, Adam's
  state, and the latent of the lowest surrogate seen with that surrogate.

  step(params, image, carry, i, steps, learning_rate) -> the carry after step i
    of ``steps``;
  loop(params, image, carry, steps, learning_rate) -> the carry after all
    ``steps`` steps, one ``lax.fori_loop``;
  choose(params, image, y, carry) -> (chosen latent, its loss L, E's loss L):
    the candidate of lowest L among y, the last latent and the best-surrogate one
    (y first: a tie keeps E's).
  """
  step: Callable
  loop: Callable
  choose: Callable


def init_carry(y):
  """The carry before the first step from E's latent y."""
  return (y, optax.scale_by_adam().init(y), y, jnp.asarray(jnp.inf, jnp.float32))


@functools.lru_cache(maxsize=32)
def make_refiner(model, height: int, width: int, lmbda: float, rate_target: str,
                 rate_level: float | None = None) -> Refiner:
  """The ``Refiner`` of images of ``height`` x ``width`` (padded layout as in
  ``loss_fn``). The step index, the step count and the step size are traced: one
  compilation serves every setting. Kept per (model, size, lambda, target, rate
  level) in the process (models hash by their config), so that every Codec of a
  model shares the compilations."""
  optimizer = optax.scale_by_adam()

  def step(params, image, carry, i, steps, learning_rate):
    surrogate = surrogate_fn(model, params, image, height, width, lmbda, rate_target,
                             rate_level)
    current, opt_state, best, best_value = carry
    value, grad = jax.value_and_grad(surrogate)(current)
    direction, opt_state = optimizer.update(grad, opt_state, current)
    better = value < best_value  # value is the surrogate of `current`
    best = jnp.where(better, current, best)
    best_value = jnp.where(better, value, best_value)
    following = current - step_size(learning_rate, steps, i) * direction
    return following, opt_state, best, best_value

  def loop(params, image, carry, steps, learning_rate):
    return jax.lax.fori_loop(
        0, steps, lambda i, c: step(params, image, c, i, steps, learning_rate), carry)

  def choose(params, image, y, carry):
    last, _, best, _ = carry
    loss = loss_fn(model, params, image, height, width, lmbda, rate_level)
    candidates = jnp.stack([y, last, best])
    losses = jax.lax.map(loss, candidates)  # one compiled pass, three times
    chosen = jnp.argmin(losses)  # the first of equal losses: E's latent
    return candidates[chosen], losses[chosen], losses[0]

  return Refiner(jax.jit(step), jax.jit(loop), jax.jit(choose))


def descend(refiner: Refiner, params, image, y, settings: RefineSettings):
  """The carry (see ``Refiner``) after ``settings.steps`` steps from y, run as
  ``settings.loop`` says. Nothing is read back to the host."""
  carry = init_carry(y)
  steps, learning_rate = jnp.int32(settings.steps), jnp.float32(settings.learning_rate)
  if (settings.loop or default_loop()) == "compiled":
    return refiner.loop(params, image, carry, steps, learning_rate)
  for i in range(settings.steps):  # dispatched asynchronously: no host round trip
    carry = refiner.step(params, image, carry, jnp.int32(i), steps, learning_rate)
  return carry


def refine(model, params, image, y, height: int, width: int, lmbda: float,
           settings: RefineSettings, step_cache: dict | None = None,
           losses: dict | None = None, rate_level: float | None = None):
  """The refined latent (float32, same shape as y; round it to code it).

  model, params: a CompressionModel and its parameters; image: (1, H', W', 3)
  float32 on 0..255, padded to multiples of 16; y: E's latent (1, H'/16, W'/16, C);
  height, width: the unpadded image's size. step_cache: a dict to keep the
  jitted parts in across calls (one compilation per image shape and lambda).
  losses: a dict that receives "loss" (L of the returned latent) and
  "unrefined_loss" (L of E's), bits per pixel plus lambda times MSE.
  rate_level: a variable-rate model's level (y is E's latent at it), else None.
  Returns E's y itself when settings.steps == 0 (and no losses then).
  """
  if settings.steps == 0:
    return y
  key = (height, width, image.shape, lmbda, settings.rate_target, rate_level)
  if step_cache is None or key not in step_cache:
    refiner = make_refiner(model, height, width, lmbda, settings.rate_target, rate_level)
    if step_cache is not None:
      step_cache[key] = refiner
  else:
    refiner = step_cache[key]
  carry = descend(refiner, params, image, y, settings)
  chosen, loss, unrefined_loss = refiner.choose(params, image, y, carry)
  if losses is not None:
    losses.update(loss=float(loss), unrefined_loss=float(unrefined_loss))
  return chosen
