"""PSNR-RGB and MS-SSIM against independent computations (skimage, scipy)."""

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from m2t_jax.evaluation import metrics


def _noisy(image, sigma, seed=0):
  rng = np.random.default_rng(seed)
  return np.clip(np.round(image + rng.normal(0, sigma, image.shape)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photo():
  return skdata.astronaut()[100:292, 100:356]  # 192 x 256: 5 scales, even at each


def test_psnr_matches_skimage(photo):
  noisy = _noisy(photo, 8)
  expected = peak_signal_noise_ratio(photo, noisy, data_range=255)
  assert metrics.psnr_rgb(photo, noisy) == pytest.approx(expected, abs=1e-10)
  # The numpy formula, over all pixels and channels.
  err = np.mean((photo.astype(np.float64) - noisy) ** 2)
  assert metrics.psnr_rgb(photo, noisy) == pytest.approx(10 * np.log10(255**2 / err))
  assert metrics.psnr_rgb(photo, photo) == math.inf


def test_one_psnr_formula_for_numbers_numpy_and_jit(photo):
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  # MSE 65.025 on 0..255 is exactly 30 dB; 6.5025 is 40 dB.
  assert metrics.psnr_from_mse(65.025) == pytest.approx(30.0, abs=1e-12)
  assert metrics.psnr_from_mse(0.0) == math.inf
  assert metrics.psnr_from_mse(0.0, min_mse=1e-10) == pytest.approx(148.1308036, abs=1e-6)
  assert metrics.psnr_from_mse(0.01, peak=1.0) == pytest.approx(20.0)
  values = np.array([65.025, 6.5025, 0.0])
  np.testing.assert_allclose(metrics.psnr_from_mse(values), [30.0, 40.0, np.inf])
  # Under jit (the training metrics): float32, the floor applied, shape kept.
  traced = jax.jit(lambda m: metrics.psnr_from_mse(m, min_mse=1e-10))(
      jnp.asarray(values, jnp.float32))
  assert traced.dtype == jnp.float32 and traced.shape == (3,)
  np.testing.assert_allclose(np.asarray(traced), [30.0, 40.0, 148.1308], rtol=1e-5)


def test_ssim_matches_skimage(photo):
  noisy = _noisy(photo, 20)
  # Gaussian 11/1.5 window (skimage: truncate 3.5 -> radius 5), population
  # covariance, mean over the region the window fits in, channel mean.
  expected = structural_similarity(photo, noisy, gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, data_range=255,
                                   channel_axis=-1)
  assert metrics.ssim(photo, noisy) == pytest.approx(expected, abs=1e-9)
  # One scale of MS-SSIM is SSIM.
  assert metrics.ms_ssim(photo, noisy, max_scales=1) == pytest.approx(expected, abs=1e-9)


def _reference_ms_ssim(a, b):
  """An independent 5-scale MS-SSIM: scipy's Gaussian filter + crop, reshape pooling."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]

  def blur(x):
    out = ndimage.gaussian_filter(x, sigma=(1.5, 1.5, 0), truncate=3.5)
    return out[5:-5, 5:-5]

  terms = []
  for level in range(5):
    mu_a, mu_b = blur(a), blur(b)
    va, vb = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (va + vb + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    value = (lum * cs if level == 4 else cs).mean(axis=(0, 1))
    terms.append(np.maximum(value, 0) ** weights[level])
    h, w = a.shape[0] // 2, a.shape[1] // 2
    a = a.reshape(h, 2, w, 2, -1).mean(axis=(1, 3))
    b = b.reshape(h, 2, w, 2, -1).mean(axis=(1, 3))
  return float(np.mean(np.prod(terms, axis=0)))


def test_ms_ssim_five_scales_matches_independent_formula(photo):
  noisy = _noisy(photo, 15)
  assert metrics.ms_ssim_num_scales(*photo.shape[:2]) == 5
  assert metrics.ms_ssim(photo, noisy) == pytest.approx(_reference_ms_ssim(photo, noisy),
                                                        abs=1e-9)


def test_ms_ssim_identity_and_monotone_in_noise(photo):
  assert metrics.ms_ssim(photo, photo) == pytest.approx(1.0, abs=1e-12)
  values = [metrics.ms_ssim(photo, _noisy(photo, s)) for s in (2, 8, 32)]
  assert 1 > values[0] > values[1] > values[2] > 0
  # Symmetric in its arguments.
  noisy = _noisy(photo, 8)
  assert metrics.ms_ssim(noisy, photo) == pytest.approx(values[1], abs=1e-12)


def test_ms_ssim_small_and_odd_images():
  image = skdata.coffee()[:64, :97]  # 64 -> 32 -> 16 (-> 8 < 11): three scales
  noisy = _noisy(image, 10)
  assert metrics.ms_ssim_num_scales(64, 97) == 3
  assert metrics.ms_ssim_num_scales(161, 400) == 5
  assert metrics.ms_ssim_num_scales(160, 400) == 4
  value = metrics.ms_ssim(image, noisy)
  assert 0 < value < 1
  assert metrics.ms_ssim(image, image) == pytest.approx(1.0)
  assert math.isnan(metrics.ms_ssim(image[:10], noisy[:10]))
  with pytest.raises(ValueError, match="shape"):
    metrics.ms_ssim(image, noisy[:, :-1])
