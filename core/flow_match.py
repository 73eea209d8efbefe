"""Flow-matching sampling shared by every family: sigma schedules and the Euler step.

x_t = (1 - s) x0 + s * noise; the model predicts v = noise - x0; Euler: x += (s_next - s) * v.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from .errors import CheckpointError
from .model_files import config_dataclass, present, read_json_object


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


_UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas", "stochastic_sampling")


@dataclass(frozen=True)
class FlowMatchSchedule:
    """diffusers' FlowMatchEulerDiscreteScheduler from its scheduler_config.json, driven as the pipelines drive
    it. The fields are the scheduler's own defaults; a family with other defaults (Qwen-Image) subclasses it,
    or passes the released config's values for a folder that has none (FLUX.1, Z-Image).

    Base sigmas (linspace(1, 1/N, N) unless the model gives its own grid) are time-shifted, by mu (linear in
    the number of image tokens, from base_shift at base_image_seq_len tokens to max_shift at
    max_image_seq_len) with dynamic shifting or by the static `shift` otherwise (FLUX.1 [schnell] 1.0, none;
    Z-Image-Turbo 3.0, Z-Image 6.0), then stretched so the last one lands on `shift_terminal` when set, then
    0 is appended. All in float32, in the scheduler's order of operations.
    """

    use_dynamic_shifting: bool = False
    shift: float = 1.0
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    shift_terminal: float | None = None
    time_shift_type: str = "exponential"

    @classmethod
    def from_config(cls, config: dict, where: str = "scheduler config"):
        enabled = [k for k in _UNSUPPORTED if config.get(k)]
        if enabled:
            raise CheckpointError(f"{where}: {', '.join(enabled)} is not supported")
        if config.get("time_shift_type", "exponential") not in ("exponential", "linear"):
            raise CheckpointError(f"{where}: time_shift_type {config['time_shift_type']!r} is not supported")
        return config_dataclass(cls, config, where)

    @classmethod
    def read(cls, folder: Path, default: "FlowMatchSchedule | None" = None):
        """From `folder/scheduler/scheduler_config.json`; `default` (else the class's defaults) when it is absent."""
        path = Path(folder) / "scheduler" / "scheduler_config.json"
        if not present(path):
            return cls() if default is None else default
        return cls.from_config(read_json_object(path), str(path))

    def mu(self, image_seq_len: int) -> float:
        """Linear in the image's token count: base_shift at base_image_seq_len, max_shift at max_image_seq_len."""
        slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return image_seq_len * slope + (self.base_shift - slope * self.base_image_seq_len)

    def sigmas(self, steps: int, image_seq_len: int, base: list[float] | None = None) -> np.ndarray:
        """steps + 1 noise levels, from about 1 down to the terminal 0 (`base`: the model's own grid)."""
        sigmas = np.asarray(base if base is not None else np.linspace(1.0, 1.0 / steps, steps)).astype(np.float32)
        sigmas = self._shifted(sigmas, image_seq_len)
        if self.shift_terminal:
            sigmas = self._stretched(sigmas)
        return np.append(sigmas, np.float32(0.0)).astype(np.float32)

    def _shifted(self, sigmas: np.ndarray, image_seq_len: int) -> np.ndarray:
        if not self.use_dynamic_shifting:
            return (self.shift * sigmas / (1 + (self.shift - 1) * sigmas)).astype(np.float32)
        mu = self.mu(image_seq_len)
        if self.time_shift_type == "linear":
            return (mu / (mu + (1 / sigmas - 1))).astype(np.float32)
        return time_shift(mu, sigmas)

    def _stretched(self, sigmas: np.ndarray) -> np.ndarray:
        """Rescale 1 - sigma so that the last sigma becomes shift_terminal."""
        one_minus = 1 - sigmas
        if one_minus[-1] == 0:  # one step: the only sigma is 1 and there is nothing to stretch
            return sigmas
        scale = one_minus[-1] / (1 - self.shift_terminal)
        return (1 - one_minus / scale).astype(np.float32)
