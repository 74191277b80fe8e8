"""The model fingerprint a stream carries: a digest of what decoding depends on.

Decoding reads the architecture, the schedule, the table parameters and the
parameters themselves; it never reads the training fields (the loss's lambda,
the optimiser, the data folders, the warm start, step counts, training-only
randomness such as MT's mask ratios and dropout, the ``size`` label). Those are
left out of the digest, so the same weights exported from another folder or run
decode each other's streams, while any change that alters decoding (a layer, a
schedule field, a table radius, one parameter bit) gives another fingerprint.

A field a new kind adds is hashed unless it is listed in ``TRAINING_ONLY``: an
unlisted training field only makes two runs refuse each other's streams (safe);
a decoding field wrongly listed would let a model decode streams it cannot.
"""

import hashlib
import json

import jax
import ml_collections
import numpy as np

from m2t_jax.coding.bitstream import FINGERPRINT_BYTES

# Dotted config paths that decoding never reads (checked by
# tests/test_fingerprint.py: changing any of them keeps the fingerprint).
TRAINING_ONLY = frozenset({
    "size", "compute_dtype", "lmbda", "lmbda_warmup_factor", "lmbda_warmup_fraction", "crop_size",
    "batch_size", "num_steps", "learning_rate", "warmup_steps", "lr_drop_fraction",
    "adam_b1", "adam_b2", "adam_eps", "weight_decay", "grad_clip_norm", "seed",
    "data", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every",
    "eval_batch_size", "init_from", "mt_mask_ratio_min", "mt_mask_ratio_max",
    "transformer.dropout", "train_part",
})


# Decoding fields added after streams were written, with the value that decodes
# exactly as before they existed: left out of the digest while they hold it, so
# those streams keep their fingerprint (any other value is hashed).
NEUTRAL = {"nested.mlp_widths": (1.0,)}


def decoding_fields(config) -> dict:
  """The config as a nested dict without the ``TRAINING_ONLY`` paths (and the
  ``NEUTRAL`` ones at their neutral value)."""
  def strip(tree: dict, prefix: str) -> dict:
    out = {}
    for key, value in tree.items():
      path = prefix + key
      if path in TRAINING_ONLY:
        continue
      if path in NEUTRAL and isinstance(value, (tuple, list)) and (
          tuple(float(v) for v in value) == NEUTRAL[path]):
        continue
      out[key] = strip(value, path + ".") if isinstance(value, dict) else value
    return out
  return strip(ml_collections.ConfigDict(config).to_dict(), "")


# decoding fields (JSON) -> the first config seen with them in this process.
_SHARED: dict[str, ml_collections.FrozenConfigDict] = {}


def shared_decoding_config(config) -> ml_collections.FrozenConfigDict:
  """The first config this process saw with the same ``decoding_fields`` as
  ``config`` (``config`` itself the first time), frozen.

  Models and jitted programs are kept per config (``functools.lru_cache``, Flax
  modules hash by their config); built from this one, models that differ only
  in training fields (the shipped models of one kind at several lambdas, a model
  and its fine-tune) share one compilation of E, D and every coding step instead
  of compiling each. Decoding never reads the fields in which they differ
  (``TRAINING_ONLY``), so the programs compute the same thing.
  """
  frozen = ml_collections.FrozenConfigDict(config)
  key = json.dumps(decoding_fields(frozen), sort_keys=True)
  return _SHARED.setdefault(key, frozen)


def fingerprint(config, params, salt: bytes = b"") -> bytes:
  """16-byte digest of ``salt``, ``decoding_fields(config)`` and every
  parameter's path, dtype, shape and bytes."""
  digest = hashlib.sha256(salt)
  digest.update(json.dumps(decoding_fields(config), sort_keys=True).encode())
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  for path, leaf in leaves:
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.digest()[:FINGERPRINT_BYTES]
