"""The part of a pipeline every family shares: components loaded on demand, freed on request, and reported.

A family's pipeline sets `info` (a LoadInfo), `loader` (its ComponentLoader, with `.quantization`
reports) and `vae`, and overrides `_load_text_encoder` when its text side is more than one module.
"""

from __future__ import annotations

import gc

import mlx.core as mx

from .errors import Cancelled
from .generation import CancelToken
from .quantize import QuantizationReport


class PipelineBase:
    # Quantization reports that make up the "text encoder" precision (FLUX.1 has two encoders).
    text_encoder_reports: tuple[str, ...] = ("text_encoder",)

    transformer = None
    text_encoder = None

    def ensure_transformer(self):
        if self.transformer is None:
            self.transformer = self.loader.transformer()
            self._update_bits()
        return self.transformer

    def ensure_text_encoder(self):
        if self.text_encoder is None:
            self.text_encoder = self._load_text_encoder()
            self._update_bits()
        return self.text_encoder

    def _load_text_encoder(self):
        return self.loader.text_encoder()

    def release_text_encoder(self) -> None:
        self.text_encoder = None
        free_buffers()

    def release_transformer(self) -> None:
        self.transformer = None
        free_buffers()

    def _update_bits(self) -> None:
        reports = self.loader.quantization
        if "transformer" in reports:
            self.info.transformer_bits = precision([reports["transformer"]])
        text = [reports[name] for name in self.text_encoder_reports if name in reports]
        if text:
            self.info.text_encoder_bits = precision(text)

    @property
    def distilled(self) -> bool:
        return self.info.defaults.distilled

    @property
    def pixels_per_token(self) -> int:
        """The VAE's downsampling, then 2x2 patches: 16 for every family's real models."""
        return 2 * self.vae.scale_factor

    @property
    def default_steps(self) -> int:
        return self.info.defaults.steps

    @property
    def default_guidance(self) -> float:
        return self.info.defaults.guidance


def free_buffers() -> None:
    """Let go of a released component's buffers now, not at the next allocation."""
    gc.collect()
    mx.clear_cache()


def precision(reports: list[QuantizationReport]) -> int | str | None:
    """The precision the components' quantized layers ended at: None (none quantized), the bits, or 'mixed'."""
    values = {bits for report in reports for bits in report.layers.values()}
    if not values:
        return None
    return values.pop() if len(values) == 1 else "mixed"


def check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.cancelled:
        raise Cancelled("cancelled")
