"""The models one ``m2t eval`` run evaluates, as (label, factory) pairs.

Every name is resolved, and every model loaded, before the first image: a wrong
name or a broken folder fails before hours of evaluation. A variable-rate model
gives one pair, and one RD point, per quality (its factory sets the quality on a
fresh Codec).
"""

from collections.abc import Callable

# The qualities ``m2t eval`` draws a variable-rate model's RD curve at when none
# are given: its range from end to end.
EVAL_QUALITIES = (0.0, 25.0, 50.0, 75.0, 100.0)

Labelled = tuple[str, Callable]


def eval_codecs(checkpoints=None, config=None, seed: int = 0, refine=0,
                qualities=None) -> list[Labelled]:
  """(label, factory) of each model to evaluate: each of ``checkpoints`` (what
  ``model_source.resolve`` takes; a training workdir's choice is printed), or a
  random model of ``config`` (a KIND:SIZE spec) with ``seed``, or, with neither,
  every shipped model of the default model's kind (one RD point per lambda);
  each refining with ``refine``. Variable-rate models are split per quality
  (``at_qualities``). ValueError for both given or bad qualities;
  FileNotFoundError for a name that is no model."""
  from m2t_jax import model_source, models  # noqa: PLC0415 - the models load JAX
  if checkpoints and config:
    raise ValueError("give either --checkpoint or --config, not both")
  if config:
    sources = [model_source.random_model(config, seed=seed)]
  elif checkpoints:
    sources = [model_source.resolve(path) for path in checkpoints]
    for source in sources:
      if source.note:
        print(source.note)
  else:
    models.resolve(None)  # raises FileNotFoundError: no model ships
    sources = [model_source.resolve(name) for name in models.names(models.kinds()[0])]
  codecs = [(s.label, lambda s=s: s.load(refine=refine)) for s in sources]
  return at_qualities(codecs, qualities)


def at_qualities(codecs: list[Labelled], qualities=None) -> list[Labelled]:
  """One (label@qQ, factory) per quality for each variable-rate model of
  ``codecs`` (qualities None: ``EVAL_QUALITIES``); fixed-rate models as they are,
  or ValueError when qualities were asked of one."""
  from m2t_jax.coding import rate_code  # noqa: PLC0415
  if qualities is not None:
    for q in qualities:
      rate_code.check_quality(q)
  out = []
  for label, factory in codecs:
    codec = factory()
    if not codec.variable_rate:
      if qualities is not None:
        raise ValueError(f"--qualities: {label} is a fixed-rate model (one RD point); "
                         "qualities need a variable-rate model.")
      out.append((label, lambda codec=codec: codec))
      continue
    for q in (EVAL_QUALITIES if qualities is None else qualities):
      def at(q=q, factory=factory):
        c = factory()
        c.quality = q
        return c
      out.append((f"{label}@q{q:g}", at))
  return out
