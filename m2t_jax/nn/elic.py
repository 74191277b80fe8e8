"""ELIC analysis and synthesis transforms (SPEC §2, after VCT's elic.py).

ElicAnalysis: image (B, H, W, 3) -> latent (B, H/16, W/16, C); H and W must be
multiples of 16 (``m2t_jax.model`` pads images to that). ElicSynthesis is the
mirror: latent (B, h, w, C) -> (B, 16h, 16w, 3). Value ranges are the caller's
choice; ``m2t_jax.model`` feeds images on 0..1 and reads the output on 0..1.
"""

import flax.linen as nn
import jax

DOWNSCALE = 16  # four stride-2 stages


class ResidualBottleneck(nn.Module):
  """x + (1x1 N->N/2, ReLU, 3x3 N/2->N/2, ReLU, 1x1 N/2->N)(x)."""

  @nn.compact
  def __call__(self, x):
    n = x.shape[-1]
    y = nn.relu(nn.Conv(n // 2, (1, 1))(x))
    y = nn.relu(nn.Conv(n // 2, (3, 3))(y))
    return x + nn.Conv(n, (1, 1))(y)


class SimplifiedAttention(nn.Module):
  """Cheng 2020 attention without non-local part: x + trunk(x) * sigmoid(mask(x))."""
  num_res: int = 3

  @nn.compact
  def __call__(self, x):
    trunk = x
    for _ in range(self.num_res):
      trunk = ResidualBottleneck()(trunk)
    mask = x
    for _ in range(self.num_res):
      mask = ResidualBottleneck()(mask)
    mask = nn.Conv(x.shape[-1], (1, 1))(mask)
    return x + trunk * nn.sigmoid(mask)


def _res_stack(x, num):
  for _ in range(num):
    x = ResidualBottleneck()(x)
  return x


def check_divisible(height: int, width: int) -> None:
  if height % DOWNSCALE or width % DOWNSCALE or height < 1 or width < 1:
    raise ValueError(f"ELIC needs height and width that are positive multiples of "
                     f"{DOWNSCALE}, got {height}x{width}; pad the image first.")


class ElicAnalysis(nn.Module):
  """E: conv/2 -> res -> conv/2 -> res -> attn -> conv/2 -> res -> conv/2(C) -> attn."""
  num_filters: int  # N
  latent_channels: int  # C
  num_res_blocks: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_divisible(x.shape[1], x.shape[2])
    conv = lambda n: nn.Conv(n, (5, 5), strides=(2, 2))
    x = _res_stack(conv(self.num_filters)(x), self.num_res_blocks)
    x = _res_stack(conv(self.num_filters)(x), self.num_res_blocks)
    x = SimplifiedAttention(self.num_res_blocks)(x)
    x = _res_stack(conv(self.num_filters)(x), self.num_res_blocks)
    x = conv(self.latent_channels)(x)
    return SimplifiedAttention(self.num_res_blocks)(x)


class ElicSynthesis(nn.Module):
  """D: attn -> deconv*2 -> res -> deconv*2 -> attn -> res -> deconv*2 -> res -> deconv*2(3)."""
  num_filters: int  # N
  num_res_blocks: int = 3
  out_channels: int = 3

  @nn.compact
  def __call__(self, y: jax.Array) -> jax.Array:
    deconv = lambda n: nn.ConvTranspose(n, (5, 5), strides=(2, 2), padding="SAME")
    x = SimplifiedAttention(self.num_res_blocks)(y)
    x = _res_stack(deconv(self.num_filters)(x), self.num_res_blocks)
    x = deconv(self.num_filters)(x)
    x = SimplifiedAttention(self.num_res_blocks)(x)
    x = _res_stack(x, self.num_res_blocks)
    x = _res_stack(deconv(self.num_filters)(x), self.num_res_blocks)
    return deconv(self.out_channels)(x)
