"""Model kinds: name -> (entropy model class, config builder, bitstream code).

This is the one place that knows which entropy models exist. The codec, the
model, training, evaluation and the benchmarks look a kind up here by the name in
``config.model`` and then use only the interface of ``entropy/base.py``.

Adding a kind is one module (a class implementing ``base.EntropyModel``), one
config file and one line below (or a ``register`` call from your own code):

    register(Kind("mykind", code=7, model=MyModel, config=my_config.get_config))
"""

import dataclasses
from collections.abc import Callable

import ml_collections


@dataclasses.dataclass(frozen=True)
class Kind:
  """One entropy-model kind.

  name: the value of ``config.model`` (and of ``m2t summary NAME``).
  code: the byte that names it in a bitstream header, 0..255, unique, never
    reused for another kind (old streams would decode with the wrong model).
  model: the Flax module class; ``model.from_config(config)`` builds it and
    ``model.validate_config(config)`` checks the kind's own fields.
  config: size ('paper' | 'small' | 'tiny' | ...) -> ml_collections.ConfigDict.
  """
  name: str
  code: int
  model: type
  config: Callable[[str], ml_collections.ConfigDict]


_KINDS: dict[str, Kind] = {}


def register(kind: Kind, replace: bool = False) -> Kind:
  """Adds ``kind``. Raises ValueError for a taken name or code (unless ``replace``
  and it is the same name)."""
  if not 0 <= kind.code <= 255:
    raise ValueError(f"Kind {kind.name!r}: bitstream code {kind.code} is not a byte.")
  old = _KINDS.get(kind.name)
  if old is not None and not replace:
    raise ValueError(f"Kind {kind.name!r} is already registered.")
  for other in _KINDS.values():
    if other.code == kind.code and other.name != kind.name:
      raise ValueError(f"Kind {kind.name!r}: bitstream code {kind.code} is taken by "
                       f"{other.name!r}.")
  _KINDS[kind.name] = kind
  return kind


def unregister(name: str) -> None:
  """Removes a kind (tests that register their own)."""
  _KINDS.pop(name, None)


def names() -> tuple[str, ...]:
  """The registered kinds, in registration order."""
  return tuple(_KINDS)


def get(name: str) -> Kind:
  """The kind ``name``; ValueError naming the known kinds otherwise."""
  kind = _KINDS.get(name)
  if kind is None:
    raise ValueError(f"Unknown model kind {name!r}; known kinds: {', '.join(_KINDS)}.")
  return kind


def by_code(code: int) -> Kind | None:
  """The kind stored as byte ``code`` in a header, or None."""
  return next((k for k in _KINDS.values() if k.code == code), None)


def build(config) -> "object":
  """The entropy model (a Flax module) of ``config`` (its kind's ``from_config``)."""
  return get(config.model).model.from_config(config)


def _register_builtin() -> None:
  # Imported here so that `configs` and the model modules can import this one.
  from m2t_jax.configs import grouped as grouped_config  # noqa: PLC0415
  from m2t_jax.configs import m2t as m2t_config  # noqa: PLC0415
  from m2t_jax.configs import mt as mt_config  # noqa: PLC0415
  from m2t_jax.configs import nested as nested_config  # noqa: PLC0415
  from m2t_jax.entropy.grouped import GroupedMixer  # noqa: PLC0415
  from m2t_jax.entropy.m2t import M2T  # noqa: PLC0415
  from m2t_jax.entropy.mt import MT  # noqa: PLC0415
  from m2t_jax.entropy.nested import NestedM2T  # noqa: PLC0415
  # The codes are the bytes of format version 2 streams: never change them.
  register(Kind("mt", code=0, model=MT, config=mt_config.get_config))
  register(Kind("m2t", code=1, model=M2T, config=m2t_config.get_config))
  register(Kind("grouped", code=2, model=GroupedMixer, config=grouped_config.get_config))
  register(Kind("nested", code=3, model=NestedM2T, config=nested_config.get_config))


_register_builtin()
