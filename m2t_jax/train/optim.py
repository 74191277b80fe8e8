"""The learning-rate schedule and the optimizer (SPEC §8; see ``m2t_jax.train``).

The LR is not inside the optax chain: the step multiplies the optimizer's
direction by ``-learning_rate_at_step(config, step)`` itself, from the global
step in the train state. An optax schedule would count its own steps in the
optimizer state, which a skipped (non-finite) update leaves untouched, so the
two counts would drift apart.
"""

import jax
import jax.numpy as jnp
import optax

from m2t_jax.train import frozen


def learning_rate_at_step(config, step) -> jax.Array:
  """LR of update ``step`` (0-based, int or traced int32) -> () float32.

  ``learning_rate * min(1, (step + 1) / warmup_steps)``, divided by 10 from step
  ``int(lr_drop_fraction * num_steps)`` on (VCT's ``CompressionSchedule``).
  """
  step = jnp.asarray(step, jnp.float32)
  warmup = jnp.minimum(1.0, (step + 1) / max(config.warmup_steps, 1))
  drop = jnp.where(step >= int(config.lr_drop_fraction * config.num_steps), 0.1, 1.0)
  return config.learning_rate * warmup * drop


def make_optimizer(config) -> optax.GradientTransformation:
  """Clip + Adam + decoupled weight decay; the caller scales by ``-lr(step)``.

  ``-lr * make_optimizer(config).update(...)`` is optax.adamw(lr, b1, b2, eps,
  weight_decay) after optax.clip_by_global_norm: the weight decay is applied as
  ``lr(t) * weight_decay * p``, i.e. scaled by the LR schedule, as VCT does.
  With ``config.train_part`` 'entropy' or 'decoder' this applies to that part's
  parameters only; the others get zero updates (``train.frozen``).
  """
  return frozen.wrap_optimizer(config, optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps),
      optax.add_decayed_weights(config.weight_decay),
  ))
