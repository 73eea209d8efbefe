"""Qwen-Image's sampling schedule, read from the model's scheduler_config.json.

As `QwenImagePipeline` drives diffusers' FlowMatchEulerDiscreteScheduler (core/flow_match.py): sigmas
linspace(1, 1/N, N), time-shifted by mu, stretched so that the last one lands on `shift_terminal`
(0.02 for Qwen-Image), then 0 appended. Qwen/Qwen-Image's scheduler_config.json values are the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...flow_match import FlowMatchSchedule


@dataclass(frozen=True)
class QwenImageSchedule(FlowMatchSchedule):
    use_dynamic_shifting: bool = True
    max_shift: float = 0.9
    max_image_seq_len: int = 8192
    shift_terminal: float | None = 0.02
