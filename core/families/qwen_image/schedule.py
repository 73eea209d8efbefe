"""Qwen-Image's sampling schedule, read from the model's scheduler_config.json.

As `QwenImagePipeline` drives diffusers' FlowMatchEulerDiscreteScheduler: sigmas linspace(1, 1/N, N),
time-shifted by mu (linear in the number of image tokens between base_shift and max_shift), then
stretched so that the last one lands on `shift_terminal` (0.02 for Qwen-Image) instead of 1/N
shifted, then 0 appended. All in float32, in the scheduler's order of operations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CheckpointError
from ...flow_match import time_shift

_UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                "stochastic_sampling")


@dataclass(frozen=True)
class QwenImageSchedule:
    """Qwen/Qwen-Image's scheduler_config.json values are the defaults."""

    use_dynamic_shifting: bool = True
    shift: float = 1.0
    base_shift: float = 0.5
    max_shift: float = 0.9
    base_image_seq_len: int = 256
    max_image_seq_len: int = 8192
    shift_terminal: float | None = 0.02
    time_shift_type: str = "exponential"

    @classmethod
    def from_dict(cls, config: dict) -> "QwenImageSchedule":
        enabled = [k for k in _UNSUPPORTED if config.get(k)]
        if enabled:
            raise CheckpointError(f"scheduler config sets {', '.join(enabled)}, which quantbench does not support")
        if config.get("time_shift_type", "exponential") not in ("exponential", "linear"):
            raise CheckpointError(f"scheduler time_shift_type {config['time_shift_type']!r} is not supported")
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in config.items() if k in fields})

    @classmethod
    def read(cls, folder: Path) -> "QwenImageSchedule":
        """From `folder/scheduler/scheduler_config.json`; Qwen-Image's own values when it is absent."""
        path = folder / "scheduler" / "scheduler_config.json"
        if not path.is_file():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ValueError:
            raise CheckpointError(f"{path}: not valid JSON") from None

    def mu(self, image_seq_len: int) -> float:
        """Linear in the image's token count: base_shift at base_image_seq_len, max_shift at max_image_seq_len."""
        slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return image_seq_len * slope + (self.base_shift - slope * self.base_image_seq_len)

    def sigmas(self, steps: int, image_seq_len: int) -> np.ndarray:
        """steps + 1 noise levels, from 1 down to the terminal 0."""
        sigmas = np.linspace(1.0, 1.0 / steps, steps).astype(np.float32)
        sigmas = self._shifted(sigmas, self.mu(image_seq_len))
        if self.shift_terminal:
            sigmas = self._stretched(sigmas)
        return np.append(sigmas, np.float32(0.0)).astype(np.float32)

    def _shifted(self, sigmas: np.ndarray, mu: float) -> np.ndarray:
        if not self.use_dynamic_shifting:
            return (self.shift * sigmas / (1 + (self.shift - 1) * sigmas)).astype(np.float32)
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

