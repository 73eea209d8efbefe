"""PipelineBase, what every family's pipeline subclasses: the template `load()` and its hooks; components
loaded on demand, freed on request, and reported; one generation's phases; packed latents decoded to
pixels, and the cheap x0 previews."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np

from ..blocks.vae import decode_tiled
from ..component_loading import ComponentLoader
from ..blocks.prompt_cut import PromptCut
from ..cpu_blas import heap_served, warn_if_loaded_too_late
from ..errors import Cancelled, InvalidRequest
from ..family import Family, PromptTokens
from ..flow_match import denoised_estimate, euler_step
from ..generation import (CancelToken, GenerationResult, StepCallback, StepInfo, check_cancel, default_compute_dtype,
                          dtype_name, initial_noise)
from ..images import to_pil
from ..lora import read_loras
from ..memory import PhasePeaks, RssPeak, memory_snapshot
from ..preview import PREVIEW_FIT_GRID, fit_latent_to_rgb, latents_to_rgb
from ..quant import keep_dequantized, quantized_matmul_kind
from ..sources import read_model_index, resolve_model_folder
from .latents import initial_latents
from .releasing import free_buffers, freed_when_cancelled
from .model_info import MAX_SEQUENCE_LENGTH, LoadInfo, MemoryOptions, ModelDefaults, fused_loras, precision

class PipelineBase:
    """A family's pipeline subclasses this and brings its own `setup`, `encode_prompts`, `_denoise` (through
    `_euler_steps`; or its own `generate` through `_run`) and `vae_latents`; the family's __init__.py sets
    `family` (core/family.py)."""

    family: Family
    transformer = None
    text_encoder = None
    _load_listener: Callable[[str, bool], None] | None = None

    def __init__(self, info: LoadInfo, loader: ComponentLoader, memory: MemoryOptions):
        self.info, self.loader, self.memory = info, loader, memory
        self.dtype = getattr(mx, info.dtype)
        self.transformer = None
        self.text_encoder = None
        self.vae = loader.vae()
        self._preview_matrix: np.ndarray | None = None
        self._prompt_cache: dict = {}
        self.setup()

    # ------------------------------------------------------------------ loading (the template and its hooks)

    @classmethod
    def load(cls, source: str | Path, *, quantize: int | dict | None = None,
             text_encoder_quantize: int | dict | None = None, dtype: mx.Dtype | None = None,
             text_encoder_layers: tuple[int, ...] | None = None, allow_download: bool = True,
             quantized_matmul: str = "auto", memory: MemoryOptions | None = None, ranks=None,
             cancel: CancelToken | None = None, loras=()):
        """Load a model folder, built-in name or repo id of this family, quantizing on the fly.

        quantize: transformer bits (or a per-layer plan {layer: bits}); text_encoder_quantize: the text
        encoder(s)' bits. text_encoder_layers: the hidden states to stack (FLUX.2; others ignore it).
        quantized_matmul: "dense" dequantizes each quantized layer's weight and runs a BLAS matmul (the fast
        path on MLX's CPU backend), "native" uses MLX's quantized kernel, "auto" picks by device. memory: what
        to free and when (MemoryOptions): with evict_text_encoder the transformer loads only once the first
        prompt is encoded and the encoder released, so the two never share memory on a one-shot run.
        ranks: an mx.distributed.Group to split the transformer across (core/tensor_parallel.py; each rank runs its own
        text encoder and VAE).
        cancel: the run's CancelToken; once set, the load stops within a layer with Cancelled (what it had
        read is let go: `freed_when_cancelled`). loras: LoRAs (core/lora.py) fused in as the weights load.
        """
        started = time.perf_counter()
        warn_if_loaded_too_late()
        memory = memory or MemoryOptions()
        folder = resolve_model_folder(source, allow_download=allow_download)
        index = read_model_index(folder)
        pipeline_class = cls.family.check_folder(folder, index)
        dtype = dtype or default_compute_dtype()
        layers = cls.hidden_states(folder, index, text_encoder_layers)
        if memory.cache_limit is not None:
            mx.set_cache_limit(memory.cache_limit)
        loader = ComponentLoader(cls.family, folder, dtype, quantize, text_encoder_quantize,
                                 quantized_matmul_kind(quantized_matmul), layers, ranks=ranks, loras=read_loras(loras))
        loader.check()
        check_cancel(cancel)
        defaults = cls.family.read_defaults(folder)
        info = LoadInfo(str(source), folder, pipeline_class, defaults, dtype_name(dtype), None, None, layers,
                        loader.matmul, cls.sequence_length(index, defaults),
                        loader=loader, text_encoder_reports=tuple(c.folder for c in cls.family.text_encoders),
                        notes={**cls.load_notes(folder), **fused_loras(index)})
        with loader.stopped_by(cancel):
            pipeline = cls(info, loader, memory)
            info.load_seconds = time.perf_counter() - started  # the components' own loads add theirs
            pipeline.ensure_text_encoder()
            if not memory.evict_text_encoder:
                pipeline.ensure_transformer()
        return pipeline

    @classmethod
    def hidden_states(cls, folder: Path, index: dict, requested: tuple[int, ...] | None) -> tuple[int, ...]:
        """Hook: the text encoder's hidden states the pipeline stacks; () when it reads the last one."""
        return ()

    @classmethod
    def max_sequence_length(cls, defaults: ModelDefaults) -> int:
        """Hook: prompt tokens, unless model_index.json says `max_sequence_length`."""
        return MAX_SEQUENCE_LENGTH

    @classmethod
    def sequence_length(cls, index: dict, defaults: ModelDefaults) -> int:
        """The prompt tokens a run reads (LoadInfo.max_sequence_length): model_index.json's `max_sequence_length`,
        else the family's."""
        return int(index.get("max_sequence_length", cls.max_sequence_length(defaults)))

    @classmethod
    def prompt_cuts(cls, folder: Path, prompts: list[str], max_length: int) -> list[list[PromptCut]]:
        """Hook: for each prompt, what each text encoder that does not read it whole leaves out (core/blocks/
        prompt_cut.py), read from the folder's tokenizer(s) without loading weights, `max_length` being
        `sequence_length`; [] for a prompt read whole. The default: every prompt is read whole."""
        return [[] for _ in prompts]

    @classmethod
    def prompt_tokens(cls, folder: Path, prompts: list[str], max_length: int) -> PromptTokens | None:
        """Hook: the tokens these prompts cost a run (core/family.py PromptTokens), read from the folder's tokenizer
        without loading weights, where the family runs each prompt at its own length; None where every prompt is
        padded to `max_length` tokens (the memory model's bound is then what runs)."""
        return None

    @classmethod
    def runs_prompts_at_their_length(cls) -> bool:
        """Whether the family brings its own prompt_tokens: a run's memory then depends on its prompts."""
        return cls.prompt_tokens.__func__ is not PipelineBase.prompt_tokens.__func__

    @classmethod
    def load_notes(cls, folder: Path) -> dict:
        """Hook: facts about the load the family reports (LoadInfo.to_dict)."""
        return {}

    def setup(self) -> None:
        """Hook, once the VAE is loaded: tokenizers, schedule, ..."""

    calibration = None  # quant.calibration.CalibrationOptions for a method that calibrates (load_pipeline sets it)

    def ensure_transformer(self):
        if self.transformer is None:
            from ..quant.calibration import load_transformer
            with self._loading("transformer"):
                load_transformer(self)
                self._update_bits()
                if self.memory.keep_dequantized and self.loader.matmul == "dense":
                    try:
                        self.info.kept_dequantized_bytes = keep_dequantized(
                            self.transformer, self.memory.keep_dequantized, self.loader.dtype, self.loader.cancel)
                    except Cancelled:
                        self.transformer = None  # not kept half-dequantized: the next run loads it whole
                        raise
        return self.transformer

    def ensure_text_encoder(self):
        if self.text_encoder is None:
            with self._loading("text encoder"):
                self.text_encoder = self._load_text_encoder()
                self._update_bits()
        return self.text_encoder

    @contextmanager
    def _loading(self, component: str):
        """A component loading, whenever it does (memory options that free it load it again inside generate): its
        seconds count in info.load_seconds, and the run's listener (`loads_told_to`) hears it begin and end."""
        told = self._load_listener
        if told is not None:
            told(component, False)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.info.load_seconds += time.perf_counter() - started
        if told is not None:
            told(component, True)

    @contextmanager
    def loads_told_to(self, listener: Callable[[str, bool], None] | None):
        """Inside, `listener(component, done)` hears each component that loads ("text encoder", "transformer")."""
        previous, self._load_listener = self._load_listener, listener
        try:
            yield
        finally:
            self._load_listener = previous

    def _load_text_encoder(self):
        """Hook: the text side as encode_prompts uses it (one module unless the family has several)."""
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
        text = [reports[name] for name in self.info.text_encoder_reports if name in reports]
        if text:
            self.info.text_encoder_bits = precision(text)

    @property
    def transformer_policy(self):
        return self.family.transformer.policy

    def validate(self, negative_prompt: str | None, guidance: float | None, width: int, height: int, steps: int,
                 true_cfg: float = 1.0) -> float:
        """Refuse what this model cannot do, in one line; return the guidance it will use."""
        return self.family.validate(self.info.defaults, negative_prompt, guidance, width, height, steps, true_cfg)

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

    # ------------------------------------------------------------------ prompts and noise

    def _cached_features(self, prompts: list[str], encode: Callable[[list[str]], list]) -> list:
        """Each prompt's features, `encode`d only for prompts not seen while the model stays loaded; the text
        encoder is freed afterwards when the memory options say so."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            self._prompt_cache.update(zip(missing, encode(missing)))
            if self.memory.evict_text_encoder:
                self.release_text_encoder()
        return [self._prompt_cache[p] for p in prompts]

    _initial_noise = staticmethod(initial_latents)

    # ------------------------------------------------------------------ generation

    negative_when_none = ""  # what a run guided by true CFG draws against when it is given no negative prompt

    def generate(self, prompt: str, negative_prompt: str | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, width: int = 1024, height: int = 1024,
                 latents: np.ndarray | None = None, callback: StepCallback | None = None,
                 cancel: CancelToken | None = None, preview: bool = True, images: tuple = ()) -> GenerationResult:
        """One image: the request checked, the seed's noise (or the caller's `latents`), the prompt encoded (with
        the negative one when true CFG runs) and the reference `images` (paths; see encode_references), `_denoise`d,
        decoded. A family with options of its own overrides it (FLUX.1's true_cfg, Z-Image's CFG normalization)."""
        steps = steps or self.default_steps
        guidance = self.validate(negative_prompt, guidance, width, height, steps)
        prompts = list(self.encoded_prompts(self.info.defaults, prompt, negative_prompt, guidance))
        use_cfg = len(prompts) == 2
        h, w = height // self.pixels_per_token, width // self.pixels_per_token
        noise = self._initial_noise(seed, latents, self.noise_shape(h, w), width, height)

        def denoise(features, *references):  # the references' encoding, for a family that takes them
            return self._denoise(noise, features, steps, guidance, use_cfg, h, w, callback, cancel, preview, *references)

        return self._run(prompts, denoise, h, w, cancel, images, prompt=prompt,
                         negative_prompt=negative_prompt if use_cfg else None, seed=seed, steps=steps,
                         guidance=guidance, width=width, height=height)

    @classmethod
    def runs_true_cfg(cls, defaults: ModelDefaults, guidance: float, true_cfg: float = 1.0) -> bool:
        """Hook: whether a run of a model with these defaults, at `guidance` (as `validate` returns it) and the
        family's separate true-CFG scale, makes a second, negative pass per step. The run and the memory model's
        fit check (core/fit.py, batch 2) both ask it, before anything loads."""
        return guidance > 1.0

    @classmethod
    def encoded_prompts(cls, defaults: ModelDefaults, prompt: str, negative_prompt: str | None, guidance: float,
                        true_cfg: float = 1.0) -> tuple[str, ...]:
        """The prompts a run encodes: the prompt, and the negative one (or `negative_when_none`) when true CFG
        runs; a negative prompt given to a run without true CFG is not encoded."""
        if cls.runs_true_cfg(defaults, guidance, true_cfg):
            return (prompt, negative_prompt or cls.negative_when_none)
        return (prompt,)

    def noise_shape(self, h: int, w: int) -> tuple[int, ...]:
        """Hook: the seed's noise for h x w latent tokens, in the layout the family's diffusers pipeline draws."""
        return (1, h * w, self.in_channels)

    def _denoise(self, noise: np.ndarray, features, steps: int, guidance: float, use_cfg: bool, h: int, w: int,
                 callback: StepCallback | None, cancel: CancelToken | None, preview: bool,
                 references=None) -> tuple[mx.array, list[float]]:
        """Hook: the noise denoised against the encoded prompts (and `encode_references`' result) -> (packed
        latents, step seconds); see _euler_steps."""
        raise NotImplementedError

    def encode_references(self, images: tuple[Path, ...]):
        """Hook: reference images (checked paths, core/reference_images.py) encoded for `_denoise`, in the encode
        phase; a family whose models take none refuses them (planning refuses them first: Supports)."""
        raise InvalidRequest(f"{self.family.label} models take no reference image")

    # ------------------------------------------------------------------ denoising

    def _run(self, prompts: list[str], denoise: Callable[..., tuple[mx.array, list[float]]], h: int, w: int,
             cancel: CancelToken | None, images: tuple = (), **settings) -> GenerationResult:
        """One generation, the same for every family: encode `prompts` (and reference `images`), load the
        transformer if it is out, `denoise(features[, references])` -> (packed latents, step seconds), decode; MLX's
        peak in each phase.
        `settings` (prompt, negative_prompt, seed, steps, guidance, width, height) go into the result."""
        phases = PhasePeaks()
        started, loaded_before = time.perf_counter(), self.info.load_seconds
        check_cancel(cancel)
        # a component loaded in the run (lean: the text encoder for a new prompt, the transformer) stops too
        with RssPeak() as rss, self.loader.stopped_by(cancel), freed_when_cancelled():
            with phases.measure("encode"):
                features = self.encode_prompts(prompts)
                references = self.encode_references(tuple(images)) if images else None
            encode_seconds = time.perf_counter() - started - (self.info.load_seconds - loaded_before)
            if self.transformer is None:
                with phases.measure("load transformer"):
                    self.ensure_transformer()
            check_cancel(cancel)
            with phases.measure("denoise"), heap_served():
                x, step_seconds = denoise(features) if references is None else denoise(features, references)
            if self.memory.release_transformer_for_decode:
                self.release_transformer()
            decode_started = time.perf_counter()
            with phases.measure("decode"):
                image = self.decode(x, h, w)
            decode_seconds = time.perf_counter() - decode_started
        return GenerationResult(
            image=to_pil(image[0]), pixels=image[0], step_seconds=step_seconds, encode_seconds=encode_seconds,
            decode_seconds=decode_seconds, load_seconds=self.info.load_seconds - loaded_before,
            total_seconds=time.perf_counter() - started, peak_memory=phases.peak,
            peak_rss=rss.peak, phase_peaks=dict(phases.peaks), **settings)

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
            self._preview_matrix = self._fit_preview(min(PREVIEW_FIT_GRID, h, w))
        return latents_to_rgb(np.array(self.vae_latents(x0, h, w))[0], self._preview_matrix)

    def _fit_preview(self, grid: int) -> np.ndarray:
        """Fit the latent -> RGB map on latents drawn like the model's own (unit normal tokens), `grid`
        tokens a side: no larger than the run's own decode, which would otherwise be outgrown by the fit."""
        draws = min(4, -(-PREVIEW_FIT_GRID**2 // grid**2))  # enough samples for a small run's fit too
        latents = [np.array(self.vae_latents(mx.array(initial_noise(1234 + i, (1, grid * grid, self.token_channels))),
                                             grid, grid)) for i in range(draws)]
        return fit_latent_to_rgb(self.preview_decode, latents, scale=self.vae.scale_factor)

    def preview_decode(self, latents: mx.array) -> mx.array:
        """NHWC VAE latents -> RGB in [-1, 1], for fitting the preview map."""
        return self.vae.decode(latents.astype(self.vae.decoder.conv_in.weight.dtype))
