"""How far a picture is from a reference picture: PSNR and SSIM on 8-bit RGB.

Both take PIL images or (H, W, 3) arrays holding 0-255 values, of the same size.

- `psnr`: 10 log10(255^2 / MSE), the MSE over every pixel and channel; infinite for identical images.
- `ssim`: the structural similarity of Wang et al. (2004) with their reference settings: an 11x11
  gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, dynamic range 255, population (not sample)
  statistics, and only the positions where the window fits inside the image (no padding). It is
  computed on each RGB channel separately and averaged over the channels and positions. These are
  the settings of scikit-image's `structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255, channel_axis=-1)` (not compared with it here:
  scikit-image is not a dependency; the tests check against a direct per-window computation).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

PEAK = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB; inf when the images are identical."""
    x, y = _pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(PEAK**2 / mse)


def ssim(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """Mean structural similarity over channels and window positions: 1.0 for identical images."""
    x, y = _pair(a, b)
    if min(x.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    mean_x, mean_y = _local_mean(x), _local_mean(y)
    variance_x = _local_mean(x * x) - mean_x**2
    variance_y = _local_mean(y * y) - mean_y**2
    covariance = _local_mean(x * y) - mean_x * mean_y
    c1, c2 = (SSIM_K1 * PEAK) ** 2, (SSIM_K2 * PEAK) ** 2
    similarity = ((2 * mean_x * mean_y + c1) * (2 * covariance + c2)) / (
        (mean_x**2 + mean_y**2 + c1) * (variance_x + variance_y + c2)
    )
    return float(similarity.mean())


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """(size,) normalised 1-D gaussian; the 2-D window is its outer product with itself."""
    offsets = np.arange(size) - (size - 1) / 2
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def _local_mean(image: np.ndarray) -> np.ndarray:
    """Gaussian-weighted mean at every position where the window fits: (H-10, W-10, C)."""
    weights = gaussian_window()
    rows = sliding_window_view(image, SSIM_WINDOW, axis=0) @ weights
    return sliding_window_view(rows, SSIM_WINDOW, axis=1) @ weights


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape} and {y.shape}")
    return x, y


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    return array
