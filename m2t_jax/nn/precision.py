"""Mixed precision: the compute dtype of the transformers and the ELIC transforms.

``config.compute_dtype`` is ``"float32"`` (default) or ``"bfloat16"``. With
bfloat16, training keeps its parameters and optimizer state in float32 (what the
optimizer updates), and each step computes with a bfloat16 copy
(``cast_params``) of every parameter except the mixture heads'; the transformer
stacks cast their input to the compute dtype, so their matmuls run in bfloat16
(several times faster on TPUs and H100s), and the ELIC transforms see bfloat16
inputs. What stays float32: the mixture heads (their float32 parameters promote
the bfloat16 features), the mixtures, the bits, the RD loss and everything the
range coder sees. Gradients flow through the casts back to float32.

The codec always decodes in float32 (``Codec`` builds its model with
``compute_dtype="float32"`` and float32 parameters): the field is a training
setting, not part of the fingerprint, and a model trained in bfloat16 codes like
any other. Decoding in bfloat16 is not offered.
"""

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
KEEP_FLOAT32 = "head"  # parameters under a module of this name stay float32


def dtype_of(name: str):
  """The jnp dtype of a ``compute_dtype`` name; ValueError for others."""
  if name not in DTYPES:
    raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {name!r}.")
  return DTYPES[name]


def cast_params(params, name: str):
  """A copy of ``params`` with the floating leaves in compute dtype ``name``,
  except those under a module called ``head`` (float32). Identity for float32."""
  dtype = dtype_of(name)
  if dtype == jnp.float32:
    return params

  def cast(path, leaf):
    keys = {getattr(p, "key", None) for p in path}
    if KEEP_FLOAT32 in keys or not jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf
    return leaf.astype(dtype)
  return jax.tree_util.tree_map_with_path(cast, params)


def coding_config(config):
  """A copy of ``config`` with ``compute_dtype='float32'``: what the codec and the
  entropy coder build their models from, whatever the model was trained in."""
  import ml_collections  # noqa: PLC0415
  plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  plain["compute_dtype"] = "float32"
  return ml_collections.ConfigDict(plain)
