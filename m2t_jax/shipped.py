"""Models shipped inside the package (``m2t_jax/models``).

``m2t_jax/models/manifest.json`` lists them:

    {"default": NAME,
     "models": {NAME: {"kind": "m2t"|"mt", "size": "small", "lmbda": float,
                       "training_steps": int, "training_hours": float,
                       "device": str, "data": str, "folder": str,
                       "validation": {"images": [...], "bpp": float, "psnr": float,
                                      "per_image": {...}},
                       "fingerprint": hex,
                       # only for a run warm-started from another model; its
                       # steps are counted in training_steps:
                       "warm_started_from": {"model": str, "steps": int}}}}

Each folder holds config.json and params.npz (``codec.save_params``; stored as
float16 to keep the package small, loaded as float32: encoder and decoder load
the same float32 values, so streams stay exact).
"""

import json
import os

MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
MANIFEST = os.path.join(MODELS_DIR, "manifest.json")


def manifest() -> dict:
  """The manifest, or an empty one when no model ships."""
  if not os.path.isfile(MANIFEST):
    return {"default": None, "models": {}}
  with open(MANIFEST) as f:
    return json.load(f)


def resolve(name: str | None) -> str:
  """Folder of the shipped model ``name``: None = the default, 'm2t' / 'mt' = the
  default (or first) model of that kind, else a model name from the manifest."""
  m = manifest()
  models = m.get("models", {})
  if not models:
    raise FileNotFoundError(
        "No trained model ships with this installation of m2t_jax; pass the path of a "
        "folder written by Codec.save (or train one: python -m m2t_jax.train).")
  if name is None:
    name = m["default"]
  elif name in ("m2t", "mt"):
    kind = name
    candidates = [n for n, e in models.items() if e["kind"] == kind]
    if not candidates:
      raise FileNotFoundError(f"No shipped {kind.upper()} model; shipped: {sorted(models)}.")
    name = m["default"] if m["default"] in candidates else sorted(candidates)[0]
  if name not in models:
    raise FileNotFoundError(f"No shipped model named {name!r}; shipped: {sorted(models)}.")
  return os.path.join(MODELS_DIR, models[name]["folder"])


def names(kind: str | None = None) -> list[str]:
  """Names of the shipped models, optionally of one kind."""
  return sorted(n for n, e in manifest().get("models", {}).items()
                if kind is None or e["kind"] == kind)
