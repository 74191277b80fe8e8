"""The one resolver of "which model?": a command-line spec -> a ``Codec``.

    from m2t_jax.model_source import resolve
    source = resolve("grouped-small-l0.0025")  # checks the spec, loads nothing
    codec = source.load()                      # the Codec

Every place that takes a model from a user resolves it here (``m2t compress``,
``m2t eval``, ``experiments/*.py --model``). A spec is, in the order tried:

* None: the default shipped model (``m2t_jax/models/manifest.json``);
* a saved-model folder (config.json + params.npz, written by ``Codec.save``);
* a training workdir (``python -m m2t_jax.train --workdir``): its exported model
  (``WORKDIR/model``) if the run finished, else its latest orbax checkpoint;
* a shipped model's name (``grouped-small-l0.0025``), or a model kind (``m2t``:
  the shipped model of that kind, the default one if it is);
* ``KIND:SIZE`` (``m2t:tiny``) or ``path/to/config.py[:SIZE]``: a model with
  random weights (seed ``seed``), for trying the pipeline and timing.

Anything else raises FileNotFoundError (an existing folder that is neither a
saved model nor a workdir, or a name that is nothing) or ValueError (a
``KIND:SIZE`` of an unknown size, a broken config file), with a message that
names the accepted forms, before any weights are read.
"""

import dataclasses
import os

import ml_collections

FORMS = ("folder", "workdir-model", "workdir-checkpoint", "shipped", "random")


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """A resolved model spec; ``load()`` builds the Codec.

  spec: the spec as given (None: the default model).
  form: one of ``FORMS``: a saved-model folder; a workdir's exported model; a
    workdir's latest checkpoint; a shipped model (by name, kind or default); a
    randomly initialised config.
  label: what results files and printed lines call the model: the spec as
    given, ``"WORKDIR (step N)"`` for a checkpoint, ``"SPEC (seed N)"`` for
    random weights, the shipped name for the default model.
  path: the folder read (saved model or workdir); None for random weights.
  step: the checkpoint's training step (form 'workdir-checkpoint'), else None.
  note: a line for the user when the spec was a workdir (which part is used).
  config: the config of random weights (form 'random'), else None.
  seed: their seed.
  """
  spec: str | None
  form: str
  label: str
  path: str | None = None
  step: int | None = None
  note: str | None = None
  config: ml_collections.ConfigDict | None = None
  seed: int = 0

  def load(self, refine=0, max_pixels: int | None = None):
    """The Codec, refining latents with ``refine`` (``RefineSettings`` or a number
    of steps; ``Codec``'s) and refusing more than ``max_pixels`` (None: the
    default). Raises ValueError for a seed outside int64 and what ``Codec.load``
    raises for a broken folder."""
    from m2t_jax import refine as refine_lib  # noqa: PLC0415 - the resolver itself is light
    from m2t_jax.codec import Codec  # noqa: PLC0415
    if self.form == "random":
      codec = Codec.from_config(self.config, seed=self.seed)
      codec.refine = refine_lib.resolve_settings(refine, codec.refine)
    elif self.form == "workdir-checkpoint":
      from m2t_jax import train  # noqa: PLC0415 - orbax and grain: only for a workdir
      codec = Codec(*train.checkpoint_model(self.path, self.step), refine=refine)
    else:
      codec = Codec.load(self.path, refine=refine)
    if max_pixels is not None:
      codec.max_pixels = int(max_pixels)
    return codec


def random_model(spec: str, seed: int = 0) -> ModelSource:
  """Random weights of a config spec: ``KIND``, ``KIND:SIZE`` or
  ``path/to/config.py[:SIZE]`` (``configs.load_config``; size default 'paper').
  Raises ValueError for an unknown kind or size or a broken config file."""
  from m2t_jax import configs  # noqa: PLC0415
  return ModelSource(spec=spec, form="random", label=f"{spec} (seed {seed})",
                     config=configs.load_config(spec), seed=seed)


def _workdir(path: str) -> ModelSource | None:
  """A training workdir's exported model, else its latest checkpoint; None when
  ``path`` is not a workdir with either."""
  from m2t_jax import saved_model  # noqa: PLC0415
  exported = os.path.join(path, "model")
  if saved_model.is_saved_model(exported):
    return ModelSource(spec=path, form="workdir-model", label=path, path=exported,
                       note=f"{path}: a training workdir; using its exported model "
                            f"{exported}")
  if os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isfile(
      os.path.join(path, "config.json")):
    from m2t_jax import train  # noqa: PLC0415 - orbax: only for a workdir without a model
    step = train.latest_step(path)
    if step is not None:
      return ModelSource(spec=path, form="workdir-checkpoint", label=f"{path} (step {step})",
                         path=path, step=step,
                         note=f"{path}: a training workdir without an exported model; "
                              f"using its latest checkpoint (step {step})")
  return None


def _is_config_spec(spec: str) -> bool:
  """Whether ``spec`` names a config (``KIND:SIZE``, ``file.py[:SIZE]``) rather
  than a model."""
  from m2t_jax.entropy import registry  # noqa: PLC0415 - imports the model modules
  if spec.endswith(".py") or ".py:" in spec:
    return True
  kind, sep, _ = spec.partition(":")
  return bool(sep) and kind in registry.names()


def resolve(spec: str | None, seed: int = 0) -> ModelSource:
  """The model that ``spec`` names (see the module docstring for the forms, in
  the order tried); ``seed``: of random weights only.

  Raises:
    FileNotFoundError: ``spec`` is no saved model, workdir, shipped name or kind
      (or no model ships, for None).
    ValueError: a config spec with an unknown kind or size, or a broken file.
  """
  from m2t_jax import models, saved_model  # noqa: PLC0415
  if spec is None:
    path = models.resolve(None)
    return ModelSource(spec=None, form="shipped", label=models.manifest()["default"],
                       path=path)
  if saved_model.is_saved_model(spec):
    return ModelSource(spec=spec, form="folder", label=spec, path=spec)
  is_dir = os.path.isdir(spec)
  if is_dir:
    source = _workdir(spec)
    if source is not None:
      return source
  from m2t_jax.entropy import registry  # noqa: PLC0415
  if spec in models.names() or spec in registry.names():
    return ModelSource(spec=spec, form="shipped", label=spec, path=models.resolve(spec))
  if not is_dir and _is_config_spec(spec):
    return random_model(spec, seed)
  if is_dir:
    raise FileNotFoundError(
        f"{spec!r} is neither a saved model folder (config.json + params.npz) nor a "
        "training workdir (an exported model in model/, or orbax checkpoints in "
        "checkpoints/ beside the run's config.json).")
  raise FileNotFoundError(
      f"{spec!r} is not a saved model folder: not a folder written by Codec.save "
      "(config.json + params.npz), nor a training workdir, nor the name of a shipped "
      f"model {models.names()} or kind {list(registry.names())}, nor a config spec "
      "KIND:SIZE (random weights, e.g. 'm2t:tiny').")
