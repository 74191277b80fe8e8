"""Image quality metrics on 8-bit RGB images: PSNR-RGB and MS-SSIM (numpy only).

Both take two arrays of the same shape (H, W, C) (or (H, W)) with values on
0..255, usually uint8: the original and the decoded image. They are computed in
float64.

* ``psnr_rgb``: 10 log10(255^2 / MSE), the MSE over all pixels *and* channels
  of one image (CompressAI's ``psnr-rgb``). Identical images give ``inf``. Its
  formula, ``psnr_from_mse``, is the one every PSNR of the package uses (the
  training metrics too, on JAX arrays).
* ``ms_ssim``: the multi-scale SSIM of Wang, Simoncelli and Bovik (2003), as
  CompressAI reports it (``ms-ssim-rgb``, computed there with pytorch_msssim):
  per channel, 5 scales, an 11-tap Gaussian window of sigma 1.5 applied without
  padding ("valid"), K1 = 0.01, K2 = 0.03, scale weights (0.0448, 0.2856,
  0.3001, 0.2363, 0.1333), 2x2 average pooling between scales, negative
  contrast-structure terms clipped to 0; the channel values are averaged.
  For images whose sides are multiples of 16 (Kodak's 768x512) this is
  pytorch_msssim's computation, up to float rounding. Odd sides at a pooling
  step: we replicate the last row/column before pooling (as
  ``tf.image.ssim_multiscale`` does with its symmetric padding); pytorch_msssim
  pads zeros on both sides instead, which darkens the border.

Small images: scale i (0-based) has sides ceil(side / 2^i); it needs at least
11 pixels on each side for the window. An image too small for 5 scales (the
shorter side < 161 px) gets as many scales as fit, with the weights of those
scales renormalised to sum to 1 (the five are used as published, summing to
1.0001, as pytorch_msssim does); the last scale used contributes the full SSIM,
as in the 5-scale formula. ``ms_ssim_num_scales`` says how many; with a single
scale MS-SSIM equals SSIM. Images with a side < 11 px have no MS-SSIM: NaN.
"""

import math

import numpy as np

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _as_pair(reference, distorted) -> tuple[np.ndarray, np.ndarray]:
  """Both images as float64 (H, W, C); checks that their shapes match."""
  a = np.asarray(reference, dtype=np.float64)
  b = np.asarray(distorted, dtype=np.float64)
  if a.shape != b.shape:
    raise ValueError(f"Images differ in shape: {a.shape} vs {b.shape}.")
  if a.ndim == 2:
    a, b = a[..., None], b[..., None]
  if a.ndim != 3 or a.size == 0:
    raise ValueError(f"Expected images (H, W) or (H, W, C), got shape {a.shape}.")
  return a, b


def mse(reference, distorted) -> float:
  """Mean squared error over all pixels and channels (values on 0..255)."""
  a, b = _as_pair(reference, distorted)
  return float(np.mean(np.square(a - b)))


def psnr_from_mse(mse_value, peak: float = 255.0, min_mse: float = 0.0):
  """PSNR in dB, 10 log10(peak^2 / max(MSE, min_mse)): the one PSNR formula.

  Args:
    mse_value: a float or an array of MSEs (numpy or JAX, traced too: the formula
      runs in the array's own library, so training steps use it under jit).
    peak: the largest value (255 for 8-bit images).
    min_mse: a floor on the MSE; 0 lets an MSE of 0 give inf.

  Returns:
    The PSNR, of the input's type and shape (a Python float for a float).
  """
  xp = getattr(mse_value, "__array_namespace__", None)
  if xp is None:  # a Python number (NumPy and JAX arrays name their library)
    error = max(float(mse_value), min_mse)
    return math.inf if error == 0 else 10.0 * math.log10(peak * peak / error)
  xp = xp()
  error = xp.maximum(mse_value, min_mse)
  with np.errstate(divide="ignore"):  # MSE 0: inf, as documented
    return 10.0 * xp.log10(peak * peak / error)


def psnr_rgb(reference, distorted, peak: float = 255.0) -> float:
  """PSNR in dB of one image, MSE over all pixels and channels; inf if equal."""
  return psnr_from_mse(mse(reference, distorted), peak)


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian window, float64 (size,)."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  w = np.exp(-0.5 * np.square(x / sigma))
  return w / w.sum()


def _filter_valid(x: np.ndarray, window: np.ndarray) -> np.ndarray:
  """Separable "valid" filtering of (H, W, C) -> (H - k + 1, W - k + 1, C).

  A sum over the k shifted slices per axis: k vectorised multiply-adds and no
  (H, W, C, k) temporary (a full-resolution photo would need hundreds of MB).
  """
  k = len(window)
  h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
  rows = sum(window[i] * x[i:i + h] for i in range(k))
  return sum(window[i] * rows[:, i:i + w] for i in range(k))


def ssim_components(reference, distorted, data_range: float = 255.0,
                    window: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Mean SSIM and mean contrast-structure term per channel.

  Args:
    reference, distorted: (H, W, C) or (H, W), values on 0..data_range; both
      sides at least the window size.
    data_range: the dynamic range L of the values (C1 = (K1 L)^2, C2 = (K2 L)^2).
    window: the 1-D filter (default: 11 taps, sigma 1.5).

  Returns:
    (ssim, cs), each float64 (C,): the means over the valid region of the SSIM
    map and of its contrast-structure part (2 s_xy + C2) / (s_x^2 + s_y^2 + C2).
  """
  a, b = _as_pair(reference, distorted)
  window = gaussian_window() if window is None else np.asarray(window, np.float64)
  if min(a.shape[:2]) < len(window):
    raise ValueError(f"Image of {a.shape[0]}x{a.shape[1]} is smaller than the "
                     f"{len(window)}-pixel SSIM window.")
  c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
  mu_a, mu_b = _filter_valid(a, window), _filter_valid(b, window)
  # Population (biased) statistics under the window, as in Wang et al. and in
  # pytorch_msssim / tf.image.ssim.
  var_a = _filter_valid(a * a, window) - mu_a * mu_a
  var_b = _filter_valid(b * b, window) - mu_b * mu_b
  cov = _filter_valid(a * b, window) - mu_a * mu_b
  cs_map = (2 * cov + c2) / (var_a + var_b + c2)
  ssim_map = (2 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1) * cs_map
  return ssim_map.mean(axis=(0, 1)), cs_map.mean(axis=(0, 1))


def ssim(reference, distorted, data_range: float = 255.0) -> float:
  """Single-scale SSIM (Gaussian 11/1.5 window, valid region), channel mean."""
  return float(np.mean(ssim_components(reference, distorted, data_range)[0]))


def ms_ssim_num_scales(height: int, width: int, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
  """How many MS-SSIM scales fit an image of height x width (0: none)."""
  n, side = 0, min(height, width)
  while n < max_scales and side >= WINDOW_SIZE:
    n += 1
    side = -(-side // 2)  # 2x2 pooling with the last row/column replicated
  return n


def _downsample(x: np.ndarray) -> np.ndarray:
  """2x2 average pooling of (H, W, C) -> (ceil(H/2), ceil(W/2), C)."""
  pad = ((0, x.shape[0] % 2), (0, x.shape[1] % 2), (0, 0))
  if any(p[1] for p in pad):
    x = np.pad(x, pad, mode="edge")
  return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def ms_ssim(reference, distorted, data_range: float = 255.0,
            max_scales: int = len(MS_SSIM_WEIGHTS)) -> float:
  """MS-SSIM of two images (see the module docstring), in [0, 1].

  Args:
    reference, distorted: (H, W, C) or (H, W) arrays, values on 0..data_range.
    data_range: L of the SSIM constants (255 for 8-bit images).
    max_scales: at most this many scales (5, the standard).

  Returns:
    The channel mean of prod_i cs_i^w_i * ssim_last^w_last; NaN if a side of
    the image is smaller than the 11-pixel window.
  """
  a, b = _as_pair(reference, distorted)
  scales = ms_ssim_num_scales(a.shape[0], a.shape[1], max_scales)
  if scales == 0:
    return math.nan
  weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
  if scales < len(MS_SSIM_WEIGHTS):
    # Only when scales are missing: the five published weights sum to 1.0001
    # and pytorch_msssim (CompressAI) uses them as they are.
    weights = weights / weights.sum()
  window = gaussian_window()
  terms = []
  for i in range(scales):
    ssim_c, cs_c = ssim_components(a, b, data_range, window)
    if i < scales - 1:
      terms.append(np.maximum(cs_c, 0.0))
      a, b = _downsample(a), _downsample(b)
  terms.append(np.maximum(ssim_c, 0.0))
  per_channel = np.prod(np.stack(terms) ** weights[:, None], axis=0)
  return float(np.mean(per_channel))
