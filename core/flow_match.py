"""Flow-matching sampling shared by every family: sigma schedules and the Euler step.

x_t = (1 - s) x0 + s * noise; the model predicts v = noise - x0; Euler: x += (s_next - s) * v.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np


def time_shift(mu: float, sigmas: np.ndarray) -> np.ndarray:
    """Exponential time shift s' = e^mu / (e^mu + (1/s - 1)), as diffusers applies it (float32)."""
    sigmas = np.asarray(sigmas, dtype=np.float32)
    return (math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)).astype(np.float32)


def shifted_sigmas(steps: int, mu: float) -> np.ndarray:
    """linspace(1, 1/N, N), time-shifted by mu, with the terminal 0 appended: N + 1 values."""
    base = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
    return np.append(time_shift(mu, base), np.float32(0.0)).astype(np.float32)


def euler_step(x: mx.array, velocity: mx.array, sigma: float, sigma_next: float) -> mx.array:
    return (x.astype(mx.float32) + (sigma_next - sigma) * velocity.astype(mx.float32)).astype(x.dtype)


def denoised_estimate(x: mx.array, velocity: mx.array, sigma: float) -> mx.array:
    """x0 = x_t - sigma * v: where this step thinks the clean latent is."""
    return x - sigma * velocity
