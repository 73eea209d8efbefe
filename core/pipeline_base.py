"""The part of a pipeline every family shares: what a model folder says about itself (ModelDefaults), what
was loaded (LoadInfo), what to free and when (MemoryOptions); components loaded on demand, freed on request,
and reported; one generation's phases; packed latents decoded to pixels, and the cheap x0 previews.

A family's pipeline sets `info` (a LoadInfo), `loader` (its ComponentLoader, with `.quantization`
reports), `vae`, `memory` (MemoryOptions) and `_preview_matrix = None`; it defines `vae_latents` (packed
tokens -> the VAE's latents) and overrides `_load_text_encoder` when its text side is more than one module.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np

from .blocks.vae import decode_tiled
from .checkpoint import LoadReport
from .errors import Cancelled
from .flow_match import denoised_estimate, euler_step
from .generation import CancelToken, GenerationResult, StepCallback, StepInfo, initial_noise
from .images import to_pil
from .memory import memory_snapshot, reset_peak
from .preview import fit_latent_to_rgb, latents_to_rgb
from .quantize import QuantizationReport
from .sources import read_model_index

# Prompt features are this many tokens unless a family or model_index.json says otherwise.
MAX_SEQUENCE_LENGTH = 512


@dataclass(frozen=True)
class MemoryOptions:
    """What to free, and when, so the generation peak is the largest phase rather than their sum.

    evict_text_encoder: free the text encoder once the prompts are encoded (their features are kept
      per prompt; a new prompt reloads it). On a one-shot run the transformer loads only afterwards.
    release_transformer_for_decode: free the transformer before the VAE decode (the next run reloads it).
    vae_tile: decode in tiles of this many pixels with blended seams (None: the whole image at once).
    cache_limit: bytes MLX may keep in its buffer cache (None: MLX's default).
    """

    evict_text_encoder: bool = False
    release_transformer_for_decode: bool = False
    vae_tile: int | None = None
    cache_limit: int | None = None

    @classmethod
    def lean(cls, vae_tile: int = 512) -> "MemoryOptions":
        return cls(evict_text_encoder=True, release_transformer_for_decode=True, vae_tile=vae_tile,
                   cache_limit=0)


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
    loader: object | None = None  # the family's ComponentLoader
    text_encoder_reports: tuple[str, ...] = ("text_encoder",)

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
            "load_seconds": round(self.load_seconds, 3),
            "weights": [r.summary() for r in self.weights],
            "quantization": [q.to_dict() for q in self.quantization],
        }


class PipelineBase:
    # Quantization reports that make up the "text encoder" precision (FLUX.1 has two encoders).
    text_encoder_reports: tuple[str, ...] = ("text_encoder",)

    transformer = None
    text_encoder = None
    transformer_class: type  # the family's transformer module (set by each family)

    @classmethod
    def transformer_component(cls, folder: Path):
        """The transformer checkpoint of a model folder (headers only; a family with other layouts overrides)."""
        from .checkpoint import open_component
        return open_component(Path(folder) / "transformer")

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

    # ------------------------------------------------------------------ denoising

    def _run(self, prompts: list[str], denoise: Callable[[object], tuple[mx.array, list[float]]], h: int, w: int,
             cancel: CancelToken | None, **settings) -> GenerationResult:
        """One generation, the same for every family: encode `prompts`, load the transformer if it is out,
        `denoise(features)` -> (packed latents, step seconds), decode; MLX's peak in each phase.
        `settings` (prompt, negative_prompt, seed, steps, guidance, width, height) go into the result."""
        phases = PhasePeaks()
        started = time.perf_counter()
        check_cancel(cancel)
        with phases.measure("encode"):
            features = self.encode_prompts(prompts)
        encode_seconds = time.perf_counter() - started
        if self.transformer is None:
            with phases.measure("load transformer"):
                self.ensure_transformer()
        check_cancel(cancel)
        with phases.measure("denoise"):
            x, step_seconds = denoise(features)
        if self.memory.release_transformer_for_decode:
            self.release_transformer()
        decode_started = time.perf_counter()
        with phases.measure("decode"):
            image = self.decode(x, h, w)
        decode_seconds = time.perf_counter() - decode_started
        return GenerationResult(
            image=to_pil(image[0]), pixels=image[0], step_seconds=step_seconds, encode_seconds=encode_seconds,
            decode_seconds=decode_seconds, total_seconds=time.perf_counter() - started, peak_memory=phases.peak,
            peak_rss=memory_snapshot().rss, phase_peaks=dict(phases.peaks), **settings)

    def _euler_steps(self, x: mx.array, sigmas, steps: int, velocity_at: Callable[[mx.array, float], mx.array],
                     h: int, w: int, callback: StepCallback | None, cancel: CancelToken | None,
                     preview: bool) -> tuple[mx.array, list[float]]:
        """Flow-match Euler from sigmas[0] down to sigmas[steps]; `velocity_at(x, sigma)` is the family's
        (guided) velocity. Stops between steps when cancelled; reports each step with an x0 preview."""
        step_seconds: list[float] = []
        for i in range(steps):
            check_cancel(cancel)
            started = time.perf_counter()
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            velocity = velocity_at(x, sigma)
            x0 = denoised_estimate(x, velocity, sigma)
            x = euler_step(x, velocity, sigma, sigma_next)
            mx.eval(x, x0)
            step_seconds.append(time.perf_counter() - started)
            if callback is not None:
                image = self._preview(x0, h, w) if preview else None
                callback(StepInfo(i, steps, sigma, step_seconds[-1], memory_snapshot(), image))
        return x, step_seconds

    # ------------------------------------------------------------------ latents -> pixels

    @property
    def token_channels(self) -> int:
        """Channels of a packed latent token (4 x the VAE's latent channels)."""
        return self.in_channels

    def vae_latents(self, packed: mx.array, h: int, w: int) -> mx.array:
        """(B, h*w, token_channels) packed tokens -> (B, 2h, 2w, C) latents as the VAE decoder takes them."""
        raise NotImplementedError

    def decode(self, packed: mx.array, h: int, w: int) -> np.ndarray:
        """Packed latents -> float image (B, H, W, 3) in [-1, 1]; in tiles when memory.vae_tile is set."""
        z = self.vae_latents(packed, h, w).astype(self.vae.decoder.conv_in.weight.dtype)
        if self.memory.vae_tile:
            return decode_tiled(self.vae, z, self.memory.vae_tile)
        image = self.vae.decode(z).astype(mx.float32)
        mx.eval(image)
        return np.array(image)

    def _preview(self, x0: mx.array, h: int, w: int) -> np.ndarray:
        if self._preview_matrix is None:
            self._preview_matrix = self._fit_preview()
        return latents_to_rgb(np.array(self.vae_latents(x0, h, w))[0], self._preview_matrix)

    def _fit_preview(self, grid: int = 16) -> np.ndarray:
        """Fit the latent -> RGB map on latents drawn like the model's own (unit normal tokens)."""
        tokens = initial_noise(1234, (1, grid * grid, self.token_channels))
        latents = np.array(self.vae_latents(mx.array(tokens), grid, grid))
        dtype = self.vae.decoder.conv_in.weight.dtype
        return fit_latent_to_rgb(lambda z: self.vae.decode(z.astype(dtype)), latents, scale=self.vae.scale_factor)


class PhasePeaks:
    """MLX's peak memory in each phase of a run (the counter is reset as each phase starts)."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}

    @contextmanager
    def measure(self, phase: str):
        reset_peak()
        try:
            yield
        finally:
            self.peaks[phase] = mx.get_peak_memory()

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)


def unpack_latents(tokens: mx.array, h: int, w: int) -> mx.array:
    """(B, h*w, 4C) tokens of 2x2 patches -> (B, 2h, 2w, C) NHWC latents (diffusers' packing, channels last)."""
    b, _, c = tokens.shape
    z = tokens.reshape(b, h, w, c // 4, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return z.reshape(b, 2 * h, 2 * w, c // 4)


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
