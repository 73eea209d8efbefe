"""FLUX.2's sampling schedule: the empirical mu fitted by BFL, then the shared shifted sigmas."""

from __future__ import annotations

import numpy as np

from ...flow_match import shifted_sigmas


def empirical_mu(image_seq_len: int, steps: int) -> float:
    """mu as a function of image tokens and steps: linear in seq_len, interpolated between 10 and 200 steps."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_seq_len > 4300:
        return float(a2 * image_seq_len + b2)
    mu_200 = a2 * image_seq_len + b2
    mu_10 = a1 * image_seq_len + b1
    slope = (mu_200 - mu_10) / 190.0
    return float(slope * steps + (mu_200 - 200.0 * slope))


def flux2_sigmas(steps: int, image_seq_len: int) -> np.ndarray:
    return shifted_sigmas(steps, empirical_mu(image_seq_len, steps))
