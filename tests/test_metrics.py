"""PSNR and SSIM against hand-computed values and a direct per-window SSIM."""

import math

import numpy as np
import pytest
from PIL import Image

from quantbench.core.metrics import SSIM_K1, SSIM_K2, gaussian_window, psnr, ssim


def _random_image(seed, shape=(64, 64, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _smooth_image(size=64):
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [128 + 100 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def _with_noise(image, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).round().astype(np.uint8)


def test_identical_images():
    image = _random_image(0)
    assert psnr(image, image) == math.inf
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)


def test_psnr_hand_computed():
    zeros = np.zeros((8, 8, 3), np.uint8)
    assert psnr(zeros, zeros + 1) == pytest.approx(20 * math.log10(255))  # MSE 1
    assert psnr(zeros, zeros + 255) == pytest.approx(0.0)
    half_off = zeros.copy()
    half_off[:4] = 10  # MSE = 100 / 2
    assert psnr(zeros, half_off) == pytest.approx(10 * math.log10(255**2 / 50))


def test_ssim_of_flat_images_is_the_luminance_term():
    # No variance anywhere: the structure term is c2 / c2 and only the means count.
    a, b = np.full((16, 16, 3), 100, np.uint8), np.full((16, 16, 3), 150, np.uint8)
    c1 = (SSIM_K1 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))


def test_ssim_matches_a_direct_per_window_computation():
    a, b = _random_image(1, (15, 13, 3)), _random_image(2, (15, 13, 3))
    window = np.outer(gaussian_window(), gaussian_window())
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    values = []
    for channel in range(3):
        for top in range(15 - 10):
            for left in range(13 - 10):
                x = a[top : top + 11, left : left + 11, channel].astype(float)
                y = b[top : top + 11, left : left + 11, channel].astype(float)
                mx, my = (window * x).sum(), (window * y).sum()
                vx, vy = (window * (x - mx) ** 2).sum(), (window * (y - my) ** 2).sum()
                cov = (window * (x - mx) * (y - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert ssim(a, b) == pytest.approx(np.mean(values), abs=1e-10)


def test_gaussian_window():
    window = gaussian_window()
    assert len(window) == 11 and window.sum() == pytest.approx(1.0)
    assert window[5] / window[4] == pytest.approx(math.exp(1 / (2 * 1.5**2)))


def test_noise_lowers_both_measures_in_the_expected_range():
    image = _smooth_image()
    mild, strong = _with_noise(image, 5), _with_noise(image, 25)
    assert 33 < psnr(image, mild) < 36  # 20 log10(255 / 5) = 34.2
    assert 19 < psnr(image, strong) < 22  # 20 log10(255 / 25) = 20.2
    assert 0.85 < ssim(image, mild) < 0.99
    assert 0.2 < ssim(image, strong) < ssim(image, mild)


def test_ssim_is_symmetric_and_negative_for_an_inverted_image():
    a, b = _random_image(3), _with_noise(_random_image(3), 30)
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    assert ssim(a, 255 - a) < -0.9


def test_accepts_pil_images_and_rejects_mismatched_sizes():
    image = _smooth_image()
    assert ssim(Image.fromarray(image), image) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        psnr(image, image[:32])
    with pytest.raises(ValueError):
        ssim(image[:8, :8], image[:8, :8])
