"""ELIC analysis and synthesis transforms (after VCT's elic.py).

ElicAnalysis: image (B, H, W, 3) -> latent (B, H/16, W/16, C); H and W must be
multiples of 16 (``m2t_jax.model`` pads images to that). ElicSynthesis is the
mirror: latent (B, h, w, C) -> (B, 16h, 16w, 3). Value ranges are the caller's
choice; ``m2t_jax.model`` feeds images on 0..1 and reads the output on 0..1.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DOWNSCALE = 16  # four stride-2 stages


class Conv1x1(nn.Module):
  """nn.Conv(features, (1, 1)) as one matmul over the channel axis.

  (..., Cin) -> (..., features); the same parameters (``kernel`` (1, 1, Cin,
  features), ``bias``), initialisation and dtype promotion as flax's layer, and
  the same function up to float summation order. Why: XLA:CPU runs a lone 1x1
  convolution several times slower than the matmul it is, forward and backward
  (docs/results/elic_profile.md).
  """
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (1, 1, cin, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = x.reshape(-1, cin) @ kernel[0, 0]
    return y.reshape(*x.shape[:-1], self.features) + bias


class ResidualBottleneck(nn.Module):
  """x + (1x1 N->N/2, ReLU, 3x3 N/2->N/2, ReLU, 1x1 N/2->N)(x)."""

  @nn.compact
  def __call__(self, x):
    n = x.shape[-1]
    # Names of flax's auto-named layers: shipped weights were saved with them.
    y = nn.relu(Conv1x1(n // 2, name="Conv_0")(x))
    y = nn.relu(nn.Conv(n // 2, (3, 3), name="Conv_1")(y))
    return x + Conv1x1(n, name="Conv_2")(y)


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
    mask = Conv1x1(x.shape[-1], name="Conv_0")(mask)
    return x + trunk * nn.sigmoid(mask)


class UpConv5x5(nn.Module):
  """nn.ConvTranspose(features, (5, 5), strides=(2, 2), padding="SAME"), computed faster.

  (B, H, W, Cin) -> (B, 2H, 2W, features); same parameters (``kernel`` (5, 5, Cin,
  features), ``bias``), same initialisation and the same function as flax's
  ConvTranspose up to float summation order. Why: XLA lowers a transposed
  convolution to a convolution over the zero-dilated input, so 3/4 of its
  multiplies hit zeros. Here each of the four output phases is a 3x3 convolution
  of the undilated input, done as one 3x3 convolution to 4 * features channels and
  a depth-to-space (sub-pixel convolution), which skips them.
  """
  features: int

  # Output row 2m + p reads input rows m + j, j in {-1, 0, 1}, through tap
  # t = 3 + 2j - p of the 5-tap kernel (JAX's "SAME" transposed padding puts 3
  # zeros before the dilated input); t = 5 marks "no tap" (a zero row).
  _TAPS = np.array([[1, 3, 5], [0, 2, 4]])  # [phase p, j + 1] -> t

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (5, 5, cin, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    t = self._TAPS
    # (p, q, j, k, Cin, F): phase (p, q)'s 3x3 kernel.
    phases = padded[t[:, None, :, None], t[None, :, None, :]]
    w = phases.transpose(2, 3, 4, 0, 1, 5).reshape(3, 3, cin, 4 * self.features)
    y = jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=(1, 1), padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    b, h, wd, _ = y.shape
    y = y.reshape(b, h, wd, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * wd, self.features) + bias


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
    # Explicit names keep the parameter tree of flax's ConvTranspose (shipped
    # weights were saved with it).
    names = iter(f"ConvTranspose_{i}" for i in range(4))
    deconv = lambda n: UpConv5x5(n, name=next(names))
    x = SimplifiedAttention(self.num_res_blocks)(y)
    x = _res_stack(deconv(self.num_filters)(x), self.num_res_blocks)
    x = deconv(self.num_filters)(x)
    x = SimplifiedAttention(self.num_res_blocks)(x)
    x = _res_stack(x, self.num_res_blocks)
    x = _res_stack(deconv(self.num_filters)(x), self.num_res_blocks)
    return deconv(self.out_channels)(x)
