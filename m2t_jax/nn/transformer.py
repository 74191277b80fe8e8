"""Pre-norm transformer with an optional attention mask and a static k/v cache.

Two ways to run the same parameters:

* full pass: ``Transformer()(x, mask=...)`` with x (B, L, d) and mask (L, L) or
  (B, L, L) bool, True where a query may attend to a key;
* cached step: ``Transformer()(x, cache=cache, offset=o)`` with x (B, g, d) the
  g new slots. Each layer writes their keys/values into its cache buffers at
  [o, o+g) and the queries attend to every cached slot in [0, o+g). That is the
  M2T block-triangular mask for a group that owns slots [o, o+g); o and g are
  static, so each step compiles once and touches only the prefix it needs.
* padded cached step: ``Transformer()(x, cache=cache, offset=o, visible=v)``
  with o and v traced int32 scalars and x (B, G, d) padded slots: keys/values
  are written at [o, o+G) (the buffers need o+G <= their length: callers give
  the cache G spare slots), and queries attend to the slots [0, v). Rows past
  the real ones are junk the caller drops, and the next step overwrites their
  slots. One compilation serves every step of width G (what a GPU needs, where
  each compilation takes seconds).

The cache is an explicit pytree (``init_cache``), not a Flax mutable collection,
so callers can donate it to a jitted step and nothing is hidden in module state.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from m2t_jax.nn import precision

# A cache: one {"k", "v"} dict per layer, each buffer (B, L, num_heads, head_dim).
Cache = list


def init_cache(batch: int, length: int, num_layers: int, num_heads: int,
               head_dim: int, dtype=jnp.float32) -> Cache:
  """Zeroed key/value buffers for ``length`` slots."""
  shape = (batch, length, num_heads, head_dim)
  return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
          for _ in range(num_layers)]


class Attention(nn.Module):
  """Multi-head self-attention; see the module docstring for mask and cache."""
  num_heads: int

  @nn.compact
  def __call__(self, x, mask=None, cache=None, offset=0, visible=None):
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"d_model={d} is not divisible by num_heads={self.num_heads}.")
    head_dim = d // self.num_heads
    proj = lambda name: nn.DenseGeneral((self.num_heads, head_dim), name=name)
    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # (B, g, H, Dh)
    if cache is not None and visible is not None:  # traced offset: padded step
      at = (0, offset, 0, 0)
      cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), at),
               "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), at)}
      k, v = cache["k"], cache["v"]
      seen = jnp.arange(k.shape[1]) < visible  # (Lc,): the slots written so far
      mask = seen if mask is None else mask & seen
    elif cache is not None:
      g = x.shape[1]
      cache = {"k": cache["k"].at[:, offset:offset + g].set(k.astype(cache["k"].dtype)),
               "v": cache["v"].at[:, offset:offset + g].set(v.astype(cache["v"].dtype))}
      k = cache["k"][:, :offset + g]
      v = cache["v"][:, :offset + g]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
    if mask is not None:
      if mask.ndim == 2:  # (q, k) -> (1, 1, q, k); (k,) broadcasts as it is
        mask = mask[None, None]
      elif mask.ndim == 3:  # (B, q, k) -> (B, 1, q, k)
        mask = mask[:, None]
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    out = nn.DenseGeneral(d, axis=(-2, -1), name="out")(out)
    return out, cache


class NestedDense(nn.Module):
  """``nn.Dense`` (same parameters, names, initialisation and arithmetic) whose
  kernel can be sliced: ``in_width`` keeps its first input rows, ``out_width``
  its first output columns (static ints; None = all). MatFormer-style width
  nesting slices the MLP's hidden units this way, so a narrower width computes
  fewer FLOPs rather than multiplying zeros."""
  features: int
  in_features: int | None = None  # the kernel's rows; None: x's last axis

  @nn.compact
  def __call__(self, x, in_width: int | None = None, out_width: int | None = None):
    rows = x.shape[-1] if self.in_features is None else self.in_features
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (rows, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    kernel = kernel[:in_width, :out_width]
    bias = bias[:out_width]
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


class MlpBlock(nn.Module):
  """Dense(mlp_dim), GELU, Dense(d). ``hidden``: which hidden units run, for
  width nesting: None (all), a static int h (the first h: sliced weights, the
  decode-time form) or an int array of per-token widths broadcastable to x's
  leading axes (the first w units of each token; the others are zeroed, the
  teacher-forced form, equal to slicing up to float rounding)."""
  mlp_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True, hidden=None):
    width = hidden if isinstance(hidden, int) else None
    y = nn.gelu(NestedDense(self.mlp_dim, name="Dense_0")(x, out_width=width))
    if hidden is not None and width is None:  # per-token widths: mask the rest
      y = y * (jnp.arange(self.mlp_dim) < jnp.asarray(hidden)[..., None]).astype(y.dtype)
    y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
    return NestedDense(x.shape[-1], self.mlp_dim, name="Dense_1")(y, in_width=width)


class EncoderBlock(nn.Module):
  """x + Attn(LN(x)), then x + MLP(LN(x))."""
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, mask=None, cache=None, offset=0, deterministic: bool = True,
               visible=None, hidden=None):
    y, cache = Attention(self.num_heads, name="attention")(
        nn.LayerNorm(name="ln_attention")(x), mask, cache, offset, visible)
    x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
    y = MlpBlock(self.mlp_dim, self.dropout, name="mlp")(
        nn.LayerNorm(name="ln_mlp")(x), deterministic, hidden)
    return x + nn.Dropout(self.dropout)(y, deterministic=deterministic), cache


class Transformer(nn.Module):
  """Stack of pre-norm blocks and a final LayerNorm: (B, n, d) -> (B, n, d).

  dtype: the compute dtype name (``nn/precision.py``); the input is cast to it,
  so with bfloat16 parameters every matmul runs in bfloat16."""
  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, mask=None, cache: Optional[Cache] = None, offset=0,
               deterministic: bool = True, visible=None):
    outs, cache = _stack(self, x, mask, cache, offset, deterministic, visible,
                         (self.num_layers,), self.num_layers, None)
    return outs[-1], cache


class NestedTransformer(Transformer):
  """A Transformer with depth exits (MaGNeTS-style nesting, docs/architecture.md):
  the output after the first d blocks for every d in ``exits`` (increasing, the
  last = num_layers), each through its own LayerNorm. The last exit's is
  ``ln_final`` and the blocks keep their names, so a Transformer's parameters
  are the last exit's, unchanged; earlier exits add ``ln_exit_{d}``.

  ``depth`` (static, one of ``exits``; default num_layers) runs only the first
  ``depth`` blocks: the cached layers past it are returned unchanged. ``hidden``
  nests the MLPs in width (MatFormer-style; ``MlpBlock``): None (full), a static
  int (every block's first h hidden units, sliced) or per-token widths (masked).
  Returns (list of (B, n, d) outputs, one per exit up to ``depth``, cache)."""
  exits: tuple = ()

  @nn.compact
  def __call__(self, x, mask=None, cache: Optional[Cache] = None, offset=0,
               deterministic: bool = True, visible=None, depth: Optional[int] = None,
               hidden=None):
    exits = tuple(self.exits) or (self.num_layers,)
    depth = self.num_layers if depth is None else depth
    if depth not in exits:
      raise ValueError(f"depth {depth} is not an exit of {exits}.")
    return _stack(self, x, mask, cache, offset, deterministic, visible, exits, depth,
                  hidden)


def _stack(module, x, mask, cache, offset, deterministic, visible, exits, depth, hidden):
  """Runs ``module``'s first ``depth`` blocks (created under its scope, named
  block_i; MLP widths ``hidden``) and returns ([normed output at each exit <=
  depth], cache)."""
  x = x.astype(precision.dtype_of(module.dtype))
  new_cache = list(cache) if cache is not None else None
  outs = []
  for i in range(depth):
    layer_cache = cache[i] if cache is not None else None
    x, layer_cache = EncoderBlock(module.num_heads, module.mlp_dim, module.dropout,
                                  name=f"block_{i}")(x, mask, layer_cache, offset,
                                                     deterministic, visible, hidden)
    if cache is not None:
      new_cache[i] = layer_cache
    if i + 1 in exits:
      name = "ln_final" if i + 1 == module.num_layers else f"ln_exit_{i + 1}"
      outs.append(nn.LayerNorm(name=name)(x))
  return outs, new_cache
