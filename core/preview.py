"""A cheap RGB preview of latents: a linear map fitted to the model's own VAE.

Decoding the full VAE every step is what makes mflux's previews slow. Instead we fit, once per
loaded model, a least-squares map from latent channels (plus a constant) to the mean colour of
the 8x8 pixel patch each latent pixel decodes to, using one small decode of random latents. A step
preview is then one small matrix product on the denoised estimate x0.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np

PREVIEW_FIT_GRID = 16  # tokens a side of the random latents the preview map is fitted on


def fit_latent_to_rgb(decode: Callable[[mx.array], mx.array], draws: list[np.ndarray], scale: int = 8) -> np.ndarray:
    """decode: NHWC latents (1, g, g, channels) -> image (1, g*scale, g*scale, 3) in [-1, 1].

    `draws` are samples of what previews will show (the caller draws them in the model's own latent
    statistics), each decoded on its own. Returns a (channels + 1, 3) matrix: rgb = [latent, 1] @ M.
    """
    features, colours = [], []
    for latents in draws:
        _, grid, _, channels = latents.shape
        image = np.array(decode(mx.array(latents)).astype(mx.float32))[0]
        colours.append(image.reshape(grid, scale, grid, scale, 3).mean(axis=(1, 3)).reshape(-1, 3))
        features.append(np.concatenate([latents.reshape(-1, channels), np.ones((grid * grid, 1), np.float32)], axis=1))
    matrix, *_ = np.linalg.lstsq(np.concatenate(features), np.concatenate(colours), rcond=None)
    return matrix.astype(np.float32)


def latents_to_rgb(latents: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(h, w, channels) latents -> (h, w, 3) uint8."""
    h, w, c = latents.shape
    rgb = np.concatenate([latents.reshape(-1, c), np.ones((h * w, 1), np.float32)], axis=1) @ matrix
    return (np.clip(rgb.reshape(h, w, 3) / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)
