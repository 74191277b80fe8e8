"""Latent <-> token patches.

A latent (B, h, w, C) is padded at the bottom/right to multiples of w_T, cut into
non-overlapping w_T x w_T patches, and the patches are folded into the batch:
tokens (B * nh * nw, w_T * w_T, C), each patch's tokens in row-major order.
Padded tokens are zeros, known to both sides and never entropy coded; ``valid``
marks the real ones. Works on numpy and jax arrays alike.
"""

import math

import jax.numpy as jnp


def grid_shape(h: int, w: int, patch_size: int) -> tuple[int, int]:
  """Number of patches (nh, nw) that cover an h x w latent."""
  if h < 1 or w < 1:
    raise ValueError(f"Latent must be at least 1x1, got {h}x{w}.")
  return math.ceil(h / patch_size), math.ceil(w / patch_size)


def to_patches(latent, patch_size: int):
  """(B, h, w, C) -> tokens (B*nh*nw, w_T*w_T, C) and valid (B*nh*nw, w_T*w_T) bool."""
  b, h, w, c = latent.shape
  nh, nw = grid_shape(h, w, patch_size)
  pad = ((0, 0), (0, nh * patch_size - h), (0, nw * patch_size - w), (0, 0))
  padded = jnp.pad(latent, pad)
  valid = jnp.pad(jnp.ones((b, h, w, 1), bool), pad)
  return _fold(padded, patch_size), _fold(valid, patch_size)[..., 0]


def _fold(x, p):
  b, hp, wp, c = x.shape
  x = x.reshape(b, hp // p, p, wp // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b * (hp // p) * (wp // p), p * p, c)


def from_patches(tokens, batch: int, h: int, w: int, patch_size: int):
  """Inverse of ``to_patches``: tokens (B*nh*nw, w_T*w_T, C) -> latent (B, h, w, C)."""
  nh, nw = grid_shape(h, w, patch_size)
  p = patch_size
  c = tokens.shape[-1]
  if tokens.shape[:2] != (batch * nh * nw, p * p):
    raise ValueError(f"Tokens of shape {tokens.shape} do not fit a batch of {batch} "
                     f"latents of {h}x{w} in {p}x{p} patches.")
  x = tokens.reshape(batch, nh, nw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, nh * p, nw * p, c)[:, :h, :w]
