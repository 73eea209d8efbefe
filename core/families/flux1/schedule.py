"""FLUX.1's sampling schedules, read from the scheduler config as diffusers' FluxPipeline drives it.

schnell: a static shift (1.0, i.e. none) of linspace(1, 1/N, N). dev: the dynamic exponential shift
with mu linear in the number of image tokens, from base_shift at base_image_seq_len tokens to
max_shift at max_image_seq_len.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import CheckpointError
from ...flow_match import shifted_sigmas

_UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "shift_terminal", "invert_sigmas")


@dataclass(frozen=True)
class Flux1Schedule:
    dynamic: bool = False
    shift: float = 1.0
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096

    @classmethod
    def from_config(cls, config: dict) -> "Flux1Schedule":
        used = [k for k in _UNSUPPORTED if config.get(k)]
        if used or config.get("time_shift_type", "exponential") != "exponential":
            raise CheckpointError(f"scheduler config: {', '.join(used) or 'a linear time shift'} is not supported")
        fields = set(cls.__dataclass_fields__) - {"dynamic"}
        values = {k: v for k, v in config.items() if k in fields and v is not None}
        return cls(dynamic=bool(config.get("use_dynamic_shifting", False)), **values)

    def mu(self, image_seq_len: int) -> float:
        slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return image_seq_len * slope + self.base_shift - slope * self.base_image_seq_len

    def sigmas(self, steps: int, image_seq_len: int) -> np.ndarray:
        """N + 1 noise levels from 1 towards 0, the terminal 0 included (float32)."""
        if self.dynamic:
            return shifted_sigmas(steps, self.mu(image_seq_len))
        base = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
        shifted = self.shift * base / (1 + (self.shift - 1) * base)
        return np.append(shifted.astype(np.float32), np.float32(0.0))


def timestep_input(sigma: float) -> np.float32:
    """The timestep FluxPipeline hands the transformer: sigma x 1000 (the scheduler's timestep), / 1000."""
    return np.float32(np.float32(sigma) * np.float32(1000.0)) / np.float32(1000.0)
