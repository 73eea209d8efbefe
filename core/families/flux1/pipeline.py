"""The FLUX.1 text-to-image pipeline (schnell and dev): load a diffusers-layout folder, quantize, generate.

schnell is timestep-distilled: 4 steps, no guidance input, no negative prompt. dev is guidance-
distilled: the guidance scale (3.5 by default) is an input of the transformer and one pass per step
does; true classifier-free guidance with a negative prompt (diffusers' `true_cfg_scale`) is optional
and costs a second pass, batched with the first. Prompts go through CLIP (pooled vector) and T5
(per-token features). Latents follow diffusers' layout, so a caller can pass the exact initial noise
a diffusers FluxPipeline would use: (1, 16, H/8, W/8), packed into 2x2 patches here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import mlx.core as mx
import numpy as np

from ...errors import CheckpointError, InvalidRequest
from ...generation import (CancelToken, GenerationResult, StepCallback, check_scale, check_size, check_steps,
                          default_compute_dtype, dtype_name, initial_noise)
from ...pipeline_base import LoadInfo, MemoryOptions, ModelDefaults, PipelineBase, unpack_latents
from ...quantize import quantized_matmul_kind
from ...sources import read_model_index, resolve_model_folder
from .clip import CLIPTextEncoder
from .components import (CLIP_POLICY, T5_POLICY, TEXT_ENCODERS, TRANSFORMER_POLICY,  # noqa: F401 (re-exported)
                         ComponentLoader)
from .schedule import Flux1Schedule, timestep_input
from .single_file import open_transformer
from .t5 import T5Encoder
from .tokenizers import ClipTokenizer, T5Tokenizer
from .transformer import Flux1Transformer, image_position_ids, pack_latents, text_position_ids
from .vae import Flux1VAE

PIPELINE_CLASSES = ("FluxPipeline",)
REQUIRED_FOLDERS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")
# T5 prompt length unless model_index.json says otherwise: BFL's reference code pads schnell's
# prompts to 256 tokens and dev's to 512.
SEQUENCE_LENGTH = {True: 256, False: 512}  # by `distilled`
DEV_STEPS, DEV_GUIDANCE, SCHNELL_STEPS = 28, 3.5, 4
# The scheduler_config.json of the FLUX.1 repositories, for a folder that has none.
SCHEDULES = {True: Flux1Schedule(), False: Flux1Schedule(dynamic=True, shift=3.0)}


@dataclass
class Flux1LoadInfo(LoadInfo):
    transformer_source: str = "diffusers folder"
    text_encoder_reports: tuple[str, ...] = tuple(TEXT_ENCODERS)  # CLIP and T5

    def to_dict(self) -> dict:
        return {**super().to_dict(), "transformer_source": self.transformer_source}


class TextEncoders(NamedTuple):
    clip: CLIPTextEncoder
    t5: T5Encoder


class Flux1Pipeline(PipelineBase):
    family = "flux1"
    transformer_policy = TRANSFORMER_POLICY
    transformer_class = Flux1Transformer

    @classmethod
    def transformer_component(cls, folder: Path):
        """transformer/ in the diffusers or BFL layout, or a BFL single file at the top (mapped to our keys)."""
        return open_transformer(Path(folder)).component

    def __init__(self, info: Flux1LoadInfo, loader: ComponentLoader, clip_tokenizer: ClipTokenizer,
                 t5_tokenizer: T5Tokenizer, schedule: Flux1Schedule, memory: MemoryOptions):
        self.info = info
        self.loader = loader
        self.clip_tokenizer, self.t5_tokenizer = clip_tokenizer, t5_tokenizer
        self.schedule = schedule
        self.memory = memory
        self.dtype = getattr(mx, info.dtype)
        self.transformer: Flux1Transformer | None = None
        self.text_encoder: TextEncoders | None = None  # CLIP and T5 together
        self.vae: Flux1VAE = loader.vae()
        self._preview_matrix: np.ndarray | None = None
        self._prompt_cache: dict[str, tuple[mx.array, mx.array]] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, source: str | Path, *, quantize: int | dict | None = None,
             text_encoder_quantize: int | dict | None = None, dtype: mx.Dtype | None = None,
             text_encoder_layers: tuple[int, ...] | None = None, allow_download: bool = True,
             quantized_matmul: str = "auto", memory: MemoryOptions | None = None) -> "Flux1Pipeline":
        """Load a FLUX.1 model folder or repo id, quantizing the transformer and both text encoders on the fly.

        quantize: transformer bits (or a per-layer plan); text_encoder_quantize: bits for CLIP and T5.
        text_encoder_layers is accepted for a uniform API and ignored: FLUX.1 reads CLIP's pooled output
        and T5's last hidden state. quantized_matmul and memory work as for FLUX.2 (Flux2Pipeline.load).
        """
        started = time.perf_counter()
        memory = memory or MemoryOptions()
        folder = resolve_model_folder(source, allow_download=allow_download)
        index = read_model_index(folder)
        pipeline_class = index.get("_class_name", "")
        if pipeline_class not in PIPELINE_CLASSES:
            raise CheckpointError(f"{folder}: a {pipeline_class or 'unknown'} model, not FLUX.1 (FluxPipeline)")
        for name in REQUIRED_FOLDERS:
            if not (folder / name).is_dir():
                raise CheckpointError(f"{folder}: component folder '{name}' is missing")
        dtype = dtype or default_compute_dtype()
        if memory.cache_limit is not None:
            mx.set_cache_limit(memory.cache_limit)
        loader = ComponentLoader(folder, dtype, quantize, text_encoder_quantize, quantized_matmul_kind(quantized_matmul))
        loader.check()
        defaults = read_defaults(folder, loader.source.component.config)
        info = Flux1LoadInfo(
            str(source), folder, pipeline_class, defaults, dtype_name(dtype), None, None, (), loader.matmul,
            int(index.get("max_sequence_length", SEQUENCE_LENGTH[defaults.distilled])), loader=loader,
            transformer_source=loader.source.description)
        pipeline = cls(info, loader, ClipTokenizer(folder / "tokenizer"), T5Tokenizer(folder / "tokenizer_2"),
                       read_schedule(folder, defaults.distilled), memory)
        pipeline.ensure_text_encoder()
        if not memory.evict_text_encoder:
            pipeline.ensure_transformer()
        pipeline._update_bits()
        info.load_seconds = time.perf_counter() - started
        return pipeline

    text_encoder_reports = tuple(TEXT_ENCODERS)

    def _load_text_encoder(self) -> TextEncoders:
        """Both text encoders (CLIP and T5): they are loaded, used and released together."""
        return TextEncoders(self.loader.clip(), self.loader.t5())

    # ------------------------------------------------------------------ saving (core/saved_models.py)

    copied_folders = ("scheduler", "tokenizer", "tokenizer_2", "vae")

    def saved_components(self) -> dict:
        """What `save_quantized` writes: folder -> (module, checkpoint key prefix, weight file stem, config).
        Every module's parameter names are its checkpoint keys; a config is given only where the source has
        no config.json to copy (a single-file transformer whose config was read off its shapes)."""
        encoders = self.ensure_text_encoder()
        transformer = self.ensure_transformer()
        has_config = (self.info.folder / "transformer" / "config.json").is_file()
        return {"transformer": (transformer, "", "diffusion_pytorch_model",
                                None if has_config else self.loader.source.component.config),
                "text_encoder": (encoders.clip, "", "model", None),
                "text_encoder_2": (encoders.t5, "", "model", None)}

    # ------------------------------------------------------------------ text

    def encode_prompts(self, prompts: list[str]) -> tuple[mx.array, mx.array]:
        """T5 features (B, max_sequence_length, d_model) and CLIP pooled vectors (B, hidden), cached per prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            clip, t5 = self.ensure_text_encoder()
            pooled = clip.pooled(self.clip_tokenizer.encode(missing))
            features = t5(self.t5_tokenizer.encode(missing, self.info.max_sequence_length))
            mx.eval(features, pooled)
            for i, prompt in enumerate(missing):
                self._prompt_cache[prompt] = (features[i], pooled[i])
            if self.memory.evict_text_encoder:
                self.release_text_encoder()
        features = mx.stack([self._prompt_cache[p][0] for p in prompts]).astype(self.dtype)
        return features, mx.stack([self._prompt_cache[p][1] for p in prompts]).astype(self.dtype)

    # ------------------------------------------------------------------ generation

    def validate(self, negative_prompt: str | None, guidance: float | None, width: int, height: int,
                 steps: int, true_cfg: float = 1.0) -> float:
        return validate_request(self.info.defaults, negative_prompt, guidance, width, height, steps, true_cfg)

    def generate(self, prompt: str, negative_prompt: str | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, width: int = 1024, height: int = 1024,
                 latents: np.ndarray | None = None, callback: StepCallback | None = None,
                 cancel: CancelToken | None = None, preview: bool = True, true_cfg: float = 1.0) -> GenerationResult:
        """Generate one image. guidance: dev's embedded guidance (default 3.5; schnell has none).
        true_cfg: above 1, true classifier-free guidance against `negative_prompt` (or the empty prompt),
        two transformer passes per step, as diffusers' `true_cfg_scale` (dev only)."""
        steps = steps or self.default_steps
        guidance = self.validate(negative_prompt, guidance, width, height, steps, true_cfg)
        use_cfg = true_cfg > 1.0
        h, w = height // self.pixels_per_token, width // self.pixels_per_token
        shape = (1, self.vae.latent_channels, 2 * h, 2 * w)
        noise = initial_noise(seed, shape) if latents is None else np.asarray(latents, np.float32)
        if noise.shape != shape:
            raise InvalidRequest(f"latents must have shape {shape} for {width}x{height}, got {tuple(noise.shape)}")
        prompts = [prompt, negative_prompt or ""] if use_cfg else [prompt]

        def denoise(features):
            txt, pooled = features
            return self._denoise(noise, txt, pooled, steps, guidance, true_cfg if use_cfg else None, h, w, callback,
                                 cancel, preview)

        return self._run(prompts, denoise, h, w, cancel, prompt=prompt,
                         negative_prompt=negative_prompt if use_cfg else None, seed=seed, steps=steps,
                         guidance=guidance, width=width, height=height)

    def _denoise(self, noise, txt, pooled, steps, guidance, true_cfg, h, w, callback, cancel, preview):
        transformer = self.transformer
        dtype, batch = txt.dtype, txt.shape[0]
        x = mx.array(pack_latents(noise)).astype(dtype)
        rope = transformer.rope(text_position_ids(txt.shape[1]), image_position_ids(h, w))
        guidance_input = mx.array([guidance] * batch, dtype=mx.float32) if transformer.embeds_guidance else None
        sigmas = self.schedule.sigmas(steps, h * w)

        def velocity_at(x, sigma):
            timestep = mx.array(np.full(batch, timestep_input(sigma), dtype=np.float32))
            velocity = transformer(mx.concatenate([x] * batch) if batch > 1 else x, txt, pooled, timestep, rope,
                                   guidance_input)
            if true_cfg is not None:
                cond, negative = velocity[:1], velocity[1:]
                velocity = negative + true_cfg * (cond - negative)
            return velocity

        return self._euler_steps(x, sigmas, steps, velocity_at, h, w, callback, cancel, preview)

    # ------------------------------------------------------------------ latents -> pixels

    def vae_latents(self, packed: mx.array, h: int, w: int) -> mx.array:
        """(B, h*w, 64) packed, scaled latents -> (B, 2h, 2w, 16) latents as the VAE decoder takes them."""
        return self.vae.denormalize(unpack_latents(packed.astype(mx.float32), h, w))

    @property
    def token_channels(self) -> int:
        return 4 * self.vae.latent_channels


def model_defaults(folder: Path) -> ModelDefaults:
    """A FLUX.1 folder's defaults without loading anything (the transformer's config or headers only):
    what a caller needs to validate a request before minutes of loading (see validate_request)."""
    return read_defaults(folder, open_transformer(folder).component.config)


def read_defaults(folder: Path, transformer_config: dict) -> ModelDefaults:
    """schnell (no guidance embedder): distilled, 4 steps, no guidance. dev: 28 steps, embedded guidance 3.5.
    model_index.json's `default_steps` / `default_guidance` win where present."""
    index = read_model_index(folder)
    distilled = not transformer_config.get("guidance_embeds", False)
    steps = int(index.get("default_steps", SCHNELL_STEPS if distilled else DEV_STEPS))
    return ModelDefaults(distilled, steps, 0.0 if distilled else float(index.get("default_guidance", DEV_GUIDANCE)),
                         embedded_guidance=not distilled)


def read_schedule(folder: Path, distilled: bool) -> Flux1Schedule:
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return SCHEDULES[distilled]
    try:
        return Flux1Schedule.from_config(json.loads(path.read_text()))
    except ValueError:
        raise CheckpointError(f"{path}: not valid JSON") from None


def validate_request(defaults: ModelDefaults, negative_prompt: str | None, guidance: float | None, width: int,
                     height: int, steps: int, true_cfg: float = 1.0) -> float:
    """Refuse what this model cannot do, in one line; return the guidance to embed (0 for schnell)."""
    check_size(width, height)
    check_steps(steps)
    if defaults.distilled:
        if negative_prompt or true_cfg != 1.0:
            raise InvalidRequest("a negative prompt needs an unconditional pass, and FLUX.1 [schnell] has none "
                                 "(it is distilled to 4 steps without guidance); use FLUX.1 [dev] with true CFG")
        if guidance not in (None, 0.0, 1.0):
            raise InvalidRequest(f"guidance {guidance:g} cannot be used with FLUX.1 [schnell]: it has no guidance "
                                 "input (leave it unset)")
        return 0.0
    if true_cfg < 1.0:
        raise InvalidRequest(f"true CFG {true_cfg:g} is not allowed: use 1 (off) or more")
    if negative_prompt and true_cfg == 1.0:
        raise InvalidRequest("a negative prompt on FLUX.1 [dev] needs true CFG: set a true CFG scale above 1 "
                             "(two transformer passes per step)")
    guidance = defaults.guidance if guidance is None else guidance
    check_scale("guidance", guidance)
    return float(guidance)
