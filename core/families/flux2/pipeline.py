"""The FLUX.2 text-to-image pipeline: load a diffusers-layout folder, quantize, generate step by step.

Klein (distilled) runs one transformer pass per step with the guidance baked into the weights;
Klein base runs true classifier-free guidance, the conditional and negative prompts batched into
one pass; [dev] (guidance-distilled) runs one pass per step with the guidance scale fed to the
transformer's guidance embedder. Klein encodes prompts with Qwen3, [dev] with Mistral-Small-3.
Latents follow diffusers' layout so that a caller can pass the exact initial noise a diffusers
pipeline would use.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from ...blocks.decoder_lm import DecoderLM
from ...checkpoint import open_component
from ...errors import CheckpointError, InvalidRequest
from ...generation import (CancelToken, GenerationResult, StepCallback, check_scale, check_size, check_steps,
                          default_compute_dtype, dtype_name, initial_noise)
from ...pipeline_base import MAX_SEQUENCE_LENGTH, LoadInfo, MemoryOptions, ModelDefaults, PipelineBase, unpack_latents
from ...quantize import quantized_matmul_kind
from ...sources import read_model_index, resolve_model_folder
from .schedule import flux2_sigmas
from .components import (TEXT_ENCODER_POLICY, TRANSFORMER_POLICY, ComponentLoader,  # noqa: F401 (re-exported)
                         text_encoder_kind_for)

from .tokenizer import PromptTokenizer
from .transformer import Flux2Transformer, image_position_ids, text_position_ids
from .vae import Flux2VAE

PIPELINE_CLASSES = ("Flux2KleinPipeline", "Flux2Pipeline")
DEV_PIPELINE_CLASS = "Flux2Pipeline"  # FLUX.2 [dev]: guidance-distilled, Mistral text encoder


class Flux2Pipeline(PipelineBase):
    family = "flux2"
    transformer_policy = TRANSFORMER_POLICY
    transformer_class = Flux2Transformer

    def __init__(self, info: LoadInfo, loader: ComponentLoader, tokenizer: PromptTokenizer,
                 memory: MemoryOptions):
        self.info = info
        self.loader = loader
        self.tokenizer = tokenizer
        self.memory = memory
        self.dtype = getattr(mx, info.dtype)
        self.transformer: Flux2Transformer | None = None
        self.text_encoder: DecoderLM | None = None
        self.vae: Flux2VAE = loader.vae()
        self.in_channels = int(open_component(info.folder / "transformer").config.get("in_channels", 128))
        self._preview_matrix: np.ndarray | None = None
        self._prompt_cache: dict[str, mx.array] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, source: str | Path, *, quantize: int | dict | None = None,
             text_encoder_quantize: int | dict | None = None, dtype: mx.Dtype | None = None,
             text_encoder_layers: tuple[int, ...] | None = None, allow_download: bool = True,
             quantized_matmul: str = "auto", memory: MemoryOptions | None = None) -> "Flux2Pipeline":
        """Load a FLUX.2 model folder or repo id, quantizing the transformer and text encoder on the fly.

        quantized_matmul: "dense" dequantizes each quantized layer's weight and runs a BLAS matmul (the
        fast path on MLX's CPU backend), "native" uses MLX's quantized kernel, "auto" picks by device.
        memory: what to free and when (see MemoryOptions). With evict_text_encoder the transformer is
        loaded only after the first prompt is encoded and the encoder released, so the two never
        share memory on a one-shot run.
        """
        started = time.perf_counter()
        memory = memory or MemoryOptions()
        folder = resolve_model_folder(source, allow_download=allow_download)
        index = read_model_index(folder)
        pipeline_class = index.get("_class_name", "")
        if pipeline_class not in PIPELINE_CLASSES:
            raise CheckpointError(f"{folder}: a {pipeline_class or 'unknown'} model, not FLUX.2 "
                                  f"({' or '.join(PIPELINE_CLASSES)})")
        dtype = dtype or default_compute_dtype()
        for name in ("transformer", "text_encoder", "tokenizer", "vae"):
            if not (folder / name).is_dir():
                raise CheckpointError(f"{folder}: component folder '{name}' is missing")
        encoder_kind = text_encoder_kind_for(open_component(folder / "text_encoder").config)
        layers = tuple(text_encoder_layers or index.get("text_encoder_out_layers")
                       or _catalog_layers(str(source)) or encoder_kind.default_layers)
        if memory.cache_limit is not None:
            mx.set_cache_limit(memory.cache_limit)
        loader = ComponentLoader(folder, dtype, quantize, text_encoder_quantize, layers,
                                 quantized_matmul_kind(quantized_matmul))
        loader.check()
        info = LoadInfo(str(source), folder, pipeline_class, model_defaults(folder), dtype_name(dtype),
                        None, None, layers, loader.matmul, int(index.get("max_sequence_length", MAX_SEQUENCE_LENGTH)),
                        loader=loader)
        pipeline = cls(info, loader, PromptTokenizer(folder / "tokenizer", encoder_kind.chat), memory)
        pipeline.text_encoder = loader.text_encoder()
        if not memory.evict_text_encoder:
            pipeline.ensure_transformer()
        pipeline._update_bits()
        info.load_seconds = time.perf_counter() - started
        return pipeline

    # ------------------------------------------------------------------ text

    def encode_prompts(self, prompts: list[str]) -> mx.array:
        """Prompt features (B, 512, 3 * hidden), cached per prompt while the model stays loaded."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            ids, mask = self.tokenizer.encode(missing, self.info.max_sequence_length)
            encoder = self.ensure_text_encoder()
            features = encoder.hidden_states(mx.array(ids), mx.array(mask), self.info.text_encoder_layers)
            mx.eval(features)
            for i, prompt in enumerate(missing):
                self._prompt_cache[prompt] = features[i]
            if self.memory.evict_text_encoder:
                self.release_text_encoder()
        return mx.stack([self._prompt_cache[p] for p in prompts]).astype(self.dtype)

    # ------------------------------------------------------------------ generation

    def validate(self, negative_prompt: str | None, guidance: float | None, width: int, height: int,
                 steps: int) -> float:
        return validate_request(self.info.defaults, negative_prompt, guidance, width, height, steps)

    def generate(self, prompt: str, negative_prompt: str | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, width: int = 1024, height: int = 1024,
                 latents: np.ndarray | None = None, callback: StepCallback | None = None,
                 cancel: CancelToken | None = None, preview: bool = True) -> GenerationResult:
        steps = steps or self.default_steps
        guidance = self.validate(negative_prompt, guidance, width, height, steps)
        use_cfg = self.info.defaults.guidance_mode == "true-cfg" and guidance > 1.0
        h, w = height // self.pixels_per_token, width // self.pixels_per_token
        channels = self.in_channels
        noise = initial_noise(seed, (1, channels, h, w)) if latents is None else np.asarray(latents, np.float32)
        if noise.shape != (1, channels, h, w):
            raise InvalidRequest(f"latents must have shape (1, {channels}, {h}, {w}) for {width}x{height}, "
                                 f"got {tuple(noise.shape)}")
        prompts = [prompt, negative_prompt or ""] if use_cfg else [prompt]
        return self._run(prompts, lambda txt: self._denoise(noise, txt, steps, guidance, use_cfg, h, w, callback,
                                                            cancel, preview),
                         h, w, cancel, prompt=prompt, negative_prompt=negative_prompt if use_cfg else None, seed=seed,
                         steps=steps, guidance=guidance, width=width, height=height)

    def _denoise(self, noise, txt, steps, guidance, use_cfg, h, w, callback, cancel, preview):
        transformer = self.transformer
        dtype = txt.dtype
        batch = txt.shape[0]
        x = mx.array(noise.reshape(1, self.in_channels, h * w).transpose(0, 2, 1)).astype(dtype)
        rope = transformer.rope(text_position_ids(txt.shape[1]), image_position_ids(h, w))
        guidance_input = mx.array([guidance] * batch, dtype=dtype) \
            if "guidance_embedder" in transformer.time_guidance_embed else None
        sigmas = flux2_sigmas(steps, h * w)

        def velocity_at(x, sigma):
            velocity = transformer(mx.concatenate([x, x]) if use_cfg else x, txt,
                                   mx.array([sigma] * batch, dtype=dtype), rope, guidance_input)
            if use_cfg:
                cond, uncond = velocity[:1], velocity[1:]
                velocity = uncond + guidance * (cond - uncond)
            return velocity

        return self._euler_steps(x, sigmas, steps, velocity_at, h, w, callback, cancel, preview)

    # ------------------------------------------------------------------ latents -> pixels

    def vae_latents(self, packed: mx.array, h: int, w: int) -> mx.array:
        """(B, h*w, 128) normalized tokens -> (B, 2h, 2w, 32) VAE latents (batch-norm stats undone)."""
        mean, std = self.vae.latent_stats()
        z = packed.astype(mx.float32) * std.astype(mx.float32) + mean.astype(mx.float32)
        return unpack_latents(z, h, w)


def validate_request(defaults: ModelDefaults, negative_prompt: str | None, guidance: float | None, width: int,
                     height: int, steps: int) -> float:
    """Refuse what this model cannot do, in one line; return the guidance to use."""
    check_size(width, height)
    check_steps(steps)
    if defaults.distilled:
        if negative_prompt:
            raise InvalidRequest("a negative prompt needs an unconditional pass, and this distilled model has "
                                 "none (its guidance was distilled into the weights); use a base model")
        if guidance is not None and guidance != 1.0:
            raise InvalidRequest(f"guidance {guidance:g} cannot be used with this distilled model: its guidance "
                                 "was distilled into the weights (leave it at 1.0, or use a base model)")
        return 1.0
    if defaults.embedded_guidance and negative_prompt:
        raise InvalidRequest("a negative prompt needs an unconditional pass, and this guidance-distilled model has "
                             "none (one pass per step, the guidance scale goes into the transformer); use guidance")
    guidance = defaults.guidance if guidance is None else guidance
    check_scale("guidance", guidance)
    return float(guidance)


def _catalog_layers(source: str) -> tuple[int, ...] | None:
    """Which hidden states a known model stacks is a per-model fact kept in the catalog."""
    from ...catalog import find_entry

    entry = find_entry(source)
    return entry.text_encoder_layers if entry is not None else None


def model_defaults(folder: Path) -> ModelDefaults:
    """What the folder says about itself, read without loading weights (see core/pipelines.py): Klein's
    defaults (4 steps distilled; 50 steps at CFG 4.0 base) and [dev]'s (50 steps, embedded guidance 4.0, as
    diffusers' Flux2Pipeline) unless model_index.json carries `default_steps` / `default_guidance` (our
    built-in models do)."""
    index = read_model_index(folder)
    if index.get("_class_name") == DEV_PIPELINE_CLASS:
        return ModelDefaults(False, int(index.get("default_steps", 50)), float(index.get("default_guidance", 4.0)),
                             embedded_guidance=True)
    return ModelDefaults.read(folder)
