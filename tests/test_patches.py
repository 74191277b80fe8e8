"""Latent <-> patches."""

import jax.numpy as jnp
import numpy as np
import pytest

from m2t_jax.entropy import patches


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (4, 4), (7, 9), (24, 25), (1, 63)])
def test_round_trip_and_valid(h, w):
  rng = np.random.default_rng(0)
  latent = rng.normal(size=(2, h, w, 3)).astype(np.float32)
  tokens, valid = patches.to_patches(jnp.asarray(latent), 4)
  nh, nw = -(-h // 4), -(-w // 4)
  assert tokens.shape == (2 * nh * nw, 16, 3) and valid.shape == (2 * nh * nw, 16)
  assert int(valid.sum()) == 2 * h * w
  assert float(jnp.abs(jnp.where(valid[..., None], 0.0, tokens)).max()) == 0.0  # pads are 0
  back = patches.from_patches(tokens, 2, h, w, 4)
  np.testing.assert_array_equal(np.asarray(back), latent)


def test_token_layout():
  # Patch (pi, pj) of image b is batch row b*nh*nw + pi*nw + pj; its tokens are
  # row-major within the patch.
  latent = np.arange(2 * 6 * 8).reshape(2, 6, 8, 1).astype(np.float32)
  tokens, _ = patches.to_patches(jnp.asarray(latent), 4)  # nh=2, nw=2
  b, pi, pj, r, c = 1, 1, 0, 1, 3
  row = b * 4 + pi * 2 + pj
  assert tokens[row, r * 4 + c, 0] == latent[b, pi * 4 + r, pj * 4 + c, 0]


def test_from_patches_rejects_wrong_shape():
  with pytest.raises(ValueError, match="do not fit"):
    patches.from_patches(jnp.zeros((3, 16, 2)), 1, 5, 5, 4)
