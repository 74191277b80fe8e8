"""Models shipped inside the package (this folder).

    from m2t_jax import models
    models.resolve(None)   # folder of the default model
    models.resolve("m2t")  # a model kind: its default (or first) shipped model
    models.names("mt")     # names of the shipped models of one kind

``manifest.json`` beside this file lists them:

    {"default": NAME,
     "models": {NAME: {"kind": KIND, "size": "small", "lmbda": float,
                       "training_steps": int, "training_hours": float,
                       "device": str, "data": str, "folder": str,
                       "validation": {"images": [...], "bpp": float, "psnr": float,
                                      "per_image": {...}},
                       "fingerprint": hex,
                       # only for a run warm-started from another model; its
                       # steps are counted in training_steps:
                       "warm_started_from": {"model": str, "steps": int}}}}

KIND is a registered model kind (``m2t_jax.entropy.registry``). Each folder
holds config.json and params.npz (``codec.save_params``; stored as float16 to
keep the package small, loaded as float32: encoder and decoder load the same
float32 values, so streams stay exact).
"""

import json
import os

MODELS_DIR = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(MODELS_DIR, "manifest.json")


def manifest() -> dict:
  """The manifest, or an empty one when no model ships."""
  if not os.path.isfile(MANIFEST):
    return {"default": None, "models": {}}
  with open(MANIFEST) as f:
    return json.load(f)


def resolve(name: str | None) -> str:
  """Folder of a shipped model.

  name: None = the default model; a model name from the manifest; or a
  registered model kind (``registry.names()``, e.g. 'm2t') = the default model
  if it is of that kind, else the first shipped model of that kind (by name). A
  manifest name wins over a kind of the same spelling.

  Raises FileNotFoundError when no such model ships.
  """
  m = manifest()
  models = m.get("models", {})
  if not models:
    raise FileNotFoundError(
        "No trained model ships with this installation of m2t_jax; pass the path of a "
        "folder written by Codec.save (or train one: python -m m2t_jax.train).")
  if name is None:
    name = m["default"]
  elif name not in models:
    from m2t_jax.entropy import registry  # noqa: PLC0415 - imports the model modules
    if name in registry.names():
      candidates = names(name)
      if not candidates:
        raise FileNotFoundError(f"No shipped model of kind {name!r}; shipped: "
                                f"{sorted(models)}.")
      name = m["default"] if m["default"] in candidates else candidates[0]
  if name not in models:
    raise FileNotFoundError(f"No shipped model named {name!r}; shipped: {sorted(models)}.")
  return os.path.join(MODELS_DIR, models[name]["folder"])


def names(kind: str | None = None) -> list[str]:
  """Names of the shipped models (sorted), optionally of one kind."""
  return sorted(n for n, e in manifest().get("models", {}).items()
                if kind is None or e["kind"] == kind)


def kinds() -> list[str]:
  """The kinds of the shipped models, each once: the default model's first, then
  in the order of the model names."""
  m = manifest()
  models = m.get("models", {})
  order = [m.get("default"), *sorted(models)]
  return list(dict.fromkeys(models[n]["kind"] for n in order if n in models))
