"""FLUX.1's sampling schedules, read from the scheduler config as diffusers' FluxPipeline drives it.

schnell: a static shift (1.0, i.e. none) of linspace(1, 1/N, N). dev: the dynamic exponential shift
with mu linear in the number of image tokens, from base_shift at base_image_seq_len tokens to
max_shift at max_image_seq_len.
"""

from __future__ import annotations

import numpy as np

from ...flow_match import FlowMatchSchedule

# FLUX.1 reads its scheduler config like every flow-match model does (core/flow_match.py).
Flux1Schedule = FlowMatchSchedule


def timestep_input(sigma: float) -> np.float32:
    """The timestep FluxPipeline hands the transformer: sigma x 1000 (the scheduler's timestep), / 1000."""
    return np.float32(np.float32(sigma) * np.float32(1000.0)) / np.float32(1000.0)
