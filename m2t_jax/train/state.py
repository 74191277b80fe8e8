"""The train state: what one update changes, its initialisation, warm starts."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2t_jax import model as model_lib
from m2t_jax.train.frozen import in_collections
from m2t_jax.train.optim import make_optimizer


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. Host copy: numpy; in training: one per device
  (``flax.jax_utils.replicate``, a leading axis of the local device count)."""
  step: Any  # () int32: updates done (skipped ones included)
  params: Any  # the model's parameter tree (float32)
  opt_state: Any  # make_optimizer(config)'s state for params
  num_skipped: Any  # () int32: updates skipped for a non-finite loss/gradient


def _initial_state(params, optimizer) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), num_skipped=jnp.zeros((), jnp.int32))


def create_train_state(config, optimizer: optax.GradientTransformation | None = None
                       ) -> TrainState:
  """Freshly initialised state (numpy, on the host), params from config.seed."""
  optimizer = optimizer or make_optimizer(config)
  # Not wrapped in another jit: init_params' own program is the one every
  # caller shares (the compilation cache keys on the whole program).
  params = model_lib.init_params(config, seed=config.seed)
  return jax.device_get(_initial_state(params, optimizer))


def train_state_shapes(config, optimizer: optax.GradientTransformation | None = None
                       ) -> TrainState:
  """``create_train_state``'s shapes and dtypes (``jax.ShapeDtypeStruct`` leaves),
  found without initialising or compiling anything: enough to trace a train step
  (``jax.make_jaxpr``), where initialising costs a compilation of the whole model."""
  optimizer = optimizer or make_optimizer(config)
  return jax.eval_shape(lambda: _initial_state(
      model_lib.init_params(config, seed=config.seed), optimizer))


def warm_start_params(params, source: str, skip: tuple[str, ...] = ()):
  """``params`` with every leaf that ``source`` has at the same path and shape
  replaced by the source's value.

  Args:
    params: the parameter tree to start from (e.g. a fresh state's).
    source: a saved model folder (``saved_model.save_params``, a run's
      ``workdir/model``) or the name of a model shipped with the package.
    skip: top-level collections (e.g. ``('entropy_model',)``) never copied;
      they keep their values in ``params`` and are left out of the match check.

  Returns:
    (params, copied, kept): the new tree (numpy, the dtypes of ``params``) and
    the ``jax.tree_util.keystr`` paths of the leaves copied from ``source`` and
    of those left as they were.

  Raises:
    ValueError: less than half of the parameters (by count) match: a model of
      another size, not a warm start.
  """
  from m2t_jax import saved_model  # noqa: PLC0415

  _, loaded = saved_model.load_params(saved_model.locate(source))
  flat_loaded = {jax.tree_util.keystr(p): v
                 for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  copied, kept = [], []

  def pick(path, value):
    name = jax.tree_util.keystr(path)
    other = None if in_collections(name, skip) else flat_loaded.get(name)
    if other is not None and other.shape == value.shape:
      copied.append(name)
      return np.asarray(other, value.dtype)
    kept.append(name)
    return value

  params = jax.tree_util.tree_map_with_path(pick, params)
  sizes = {jax.tree_util.keystr(p): int(np.prod(v.shape))
           for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  considered = [v for k, v in sizes.items() if not in_collections(k, skip)]
  fraction = sum(sizes[k] for k in copied) / max(1, sum(considered))
  if fraction < 0.5:  # a few small leaves (e.g. the RGB bias) match any model
    raise ValueError(f"init_from={source!r}: only {100 * fraction:.1f}% of this model's "
                     "parameters have a match of the same path and shape; is it a "
                     "model of another size?")
  return params, copied, kept

