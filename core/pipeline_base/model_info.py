"""What a pipeline knows about its model and its load: what the model folder says about itself
(ModelDefaults), what was loaded and how (LoadInfo), and what to free and when (MemoryOptions)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import mlx.core as mx

from ..blocks import attention_kernel, elementwise_kernel
from ..checkpoint import LoadReport
from ..component_loading import ComponentLoader
from ..quant import QuantizationReport, tile_kernel
from ..sources import read_model_index

# Prompt features are this many tokens unless a family or model_index.json says otherwise.
MAX_SEQUENCE_LENGTH = 512


@dataclass(frozen=True)
class MemoryOptions:
    """What to free, and when, so the generation peak is the largest phase rather than their sum.

    evict_text_encoder: free the text encoder once the prompts are encoded (their features are kept
      per prompt; a new prompt reloads it). On a one-shot run the transformer loads only afterwards.
    release_transformer_for_decode: free the transformer before the VAE decode (the next run reloads it).
    vae_tile: decode in tiles of this many pixels with blended seams (None: the whole image at once).
    fit_vae_tile: the generation path picks vae_tile for each run: the largest tile whose predicted decode
      does not set the run's peak (core.fit.lean_vae_tile).
    cache_limit: bytes MLX may keep in its buffer cache (None: MLX's default).
    keep_dequantized: bytes of the transformer's quantized layers also kept dequantized on the dense CPU path
      (math.inf: all; 0: none), memory for speed (core/quant/dense.py keep_dequantized).
    """

    evict_text_encoder: bool = False
    release_transformer_for_decode: bool = False
    vae_tile: int | None = None
    cache_limit: int | None = None
    fit_vae_tile: bool = False
    keep_dequantized: float = 0.0

    @classmethod
    def lean(cls, vae_tile: int | None = 512) -> "MemoryOptions":
        return cls(evict_text_encoder=True, release_transformer_for_decode=True, vae_tile=vae_tile,
                   cache_limit=0)

    @classmethod
    def lean_fitted_tile(cls) -> "MemoryOptions":
        """lean(), with the VAE tile that the memory model fits to each run."""
        return replace(cls.lean(None), fit_vae_tile=True)


@dataclass(frozen=True)
class ModelDefaults:
    """What a model folder says about itself: distilled or base, default steps and guidance.

    distilled: step-distilled, guidance baked into the weights: fixed guidance (no negative prompt).
    embedded_guidance: guidance-distilled: one pass per step, the guidance scale is an input of the
      transformer's guidance embedder, so it can be set but there is no negative prompt.
    """

    distilled: bool
    steps: int
    guidance: float
    embedded_guidance: bool = False

    @property
    def guidance_mode(self) -> str:
        """As in the catalog: "none" (baked in), "embedded" (guidance-distilled) or "true-cfg" (two passes)."""
        return "embedded" if self.embedded_guidance else "none" if self.distilled else "true-cfg"

    @property
    def negative_prompt(self) -> bool:
        """Whether a negative prompt can be used (only with true CFG)."""
        return self.guidance_mode == "true-cfg"

    @classmethod
    def read(cls, folder: Path, steps: tuple[int, int] = (4, 50), guidance: float = 4.0) -> "ModelDefaults":
        """From model_index.json: `is_distilled`, `default_steps` (else steps[0] distilled, steps[1] base) and
        `default_guidance` (else `guidance`; 1.0 when distilled)."""
        index = read_model_index(folder)
        distilled = bool(index.get("is_distilled", False))
        return cls(distilled, int(index.get("default_steps", steps[0] if distilled else steps[1])),
                   1.0 if distilled else float(index.get("default_guidance", guidance)))


@dataclass
class LoadInfo:
    source: str
    folder: Path
    pipeline_class: str
    defaults: ModelDefaults
    dtype: str
    transformer_bits: int | None
    text_encoder_bits: int | None
    text_encoder_layers: tuple[int, ...]
    quantized_matmul: str = "native"
    max_sequence_length: int = MAX_SEQUENCE_LENGTH
    load_seconds: float = 0.0
    loader: ComponentLoader | None = None
    text_encoder_reports: tuple[str, ...] = ("text_encoder",)  # the components the text-encoder precision covers
    notes: dict = field(default_factory=dict)  # what else the family reports about the load
    kept_dequantized_bytes: int = 0  # dense copies of quantized layers kept (MemoryOptions.keep_dequantized)

    @property
    def weights(self) -> list[LoadReport]:
        return list(self.loader.reports.values()) if self.loader else []

    @property
    def quantization(self) -> list[QuantizationReport]:
        """Transformer first, then the text encoder(s): whichever have been loaded so far."""
        reports = self.loader.quantization if self.loader else {}
        return [reports[name] for name in ("transformer", *self.text_encoder_reports) if name in reports]

    def to_dict(self) -> dict:
        return {
            "source": self.source, "folder": str(self.folder), "pipeline": self.pipeline_class,
            "distilled": self.defaults.distilled, "guidance_mode": self.defaults.guidance_mode,
            "default_steps": self.defaults.steps,
            "default_guidance": self.defaults.guidance, "dtype": self.dtype, "transformer_bits": self.transformer_bits,
            "text_encoder_bits": self.text_encoder_bits, "text_encoder_layers": list(self.text_encoder_layers),
            "quantized_matmul": self.quantized_matmul,
            **({"cpu_tile_kernel": tile_kernel.status().to_dict()} if self.quantized_matmul == "dense" else {}),
            **({"cpu_attention_kernel": attention_kernel.status().to_dict(),
                "cpu_elementwise_kernel": elementwise_kernel.status().to_dict()} if mx.default_device() == mx.cpu else {}),
            "kept_dequantized_bytes": self.kept_dequantized_bytes,
            "loras": [lora.to_dict(strength) for lora, strength in self.loader.loras] if self.loader else [],
            "load_seconds": round(self.load_seconds, 3),
            "weights": [r.summary() for r in self.weights],
            "quantization": [q.to_dict() for q in self.quantization],
            **self.notes,
        }


def fused_loras(index: dict) -> dict:
    """A load's note of the LoRAs a folder saved with `save --lora` holds fused (model_index.json's
    quantbench_saved.loras: each one's file name and strength), when it has any."""
    saved = index.get("quantbench_saved")
    loras = saved.get("loras") if isinstance(saved, dict) else None
    kept = [{"file": lora["file"], "strength": lora["strength"]} for lora in loras if isinstance(lora, dict)
            and isinstance(lora.get("file"), str) and isinstance(lora.get("strength"), (int, float))
            and not isinstance(lora.get("strength"), bool)] if isinstance(loras, list) else []
    return {"fused_loras": kept} if kept else {}


def precision(reports: list[QuantizationReport]) -> int | str | None:
    """The precision the components' quantized layers ended at: None (none quantized), the bits (whatever the
    method and group size: the reports' `bits_label` say those), or 'mixed'."""
    values = {spec.bits for report in reports for spec in report.layers.values()}
    if not values:
        return None
    return values.pop() if len(values) == 1 else "mixed"
