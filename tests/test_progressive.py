"""Progressive decoding: the first k groups decoded, the rest predicted means."""

import numpy as np
import pytest
from skimage import data as skdata

from m2t_jax import Codec, get_config
from m2t_jax.entropy import patches


@pytest.mark.parametrize("kind,order", [("m2t", "qlds"), ("mt", "qlds"), ("mt", "entropy")])
def test_progressive_decoding(kind, order):
  config = get_config(kind, "tiny")
  config.schedule.order = order
  codec = Codec.from_config(config)
  image = np.ascontiguousarray(skdata.chelsea()[:50, :70])
  stream = codec.compress(image)
  full = codec.decompress(stream)
  np.testing.assert_array_equal(codec.decompress(stream, num_steps=config.schedule.num_steps),
                                full)
  y_hat = codec.analyze(image)
  for k in range(config.schedule.num_steps):
    partial = codec.decompress(stream, num_steps=k)
    assert partial.shape == image.shape and partial.dtype == np.uint8
    latent = codec.decompress_latent(stream, num_steps=k)
    tokens, valid = patches.to_patches(latent, config.patch_size)
    true_tokens, _ = patches.to_patches(y_hat.astype(np.float64), config.patch_size)
    exact = np.all(np.asarray(tokens) == np.asarray(true_tokens), axis=-1) & np.asarray(valid)
    # Fixed orders: exactly the cells of the first k groups are the true values
    # (later cells could equal them only by chance: predicted means are not integers).
    if order != "entropy":
      sched = codec.entropy_model.schedule
      need = np.zeros(exact.shape, bool)
      need[:, sched.order[:sched.offsets[k]]] = True
      assert np.all(exact[need & np.asarray(valid)])
    decoded_cells = int(exact.sum())
    later = np.asarray(tokens)[np.asarray(valid) & ~exact]
    assert np.any(later != np.round(later))  # predicted means stand in
    assert decoded_cells < int(np.asarray(valid).sum())
  with pytest.raises(ValueError, match="num_steps"):
    codec.decompress(stream, num_steps=config.schedule.num_steps + 1)
  # Not counts of steps, though within the range: no silent partial decode.
  for not_a_count in (True, 1.5, np.float64(1.0)):
    with pytest.raises(ValueError, match="num_steps must be an integer"):
      codec.decompress(stream, num_steps=not_a_count)
