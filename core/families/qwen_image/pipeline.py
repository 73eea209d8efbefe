"""The Qwen-Image text-to-image pipeline: load a diffusers-layout folder, quantize, generate step by step.

Same API as core/families/flux2/pipeline.Flux2Pipeline. What is Qwen-Image's own:
- prompts go through a fixed template into Qwen2.5-VL; the template's first 34 tokens are dropped
  from the last hidden state, and each prompt keeps its own length (padding, when the prompt and
  the negative prompt are batched, is masked out of the transformer's attention);
- guidance is true classifier-free guidance with norm rescaling: the guided velocity is scaled back,
  token by token, to the norm of the conditional one. Without a negative prompt the negative pass
  uses " ", as the model card does; guidance 1 (or less) runs the conditional pass alone;
- latents are 16-channel, 8x; the transformer sees them packed 2x2 into 64-channel tokens and
  normalized by the VAE config's per-channel latents_mean / latents_std.
`generate(latents=...)` takes the packed (1, tokens, 64) noise, the layout diffusers'
QwenImagePipeline takes, so a caller can pass the exact initial noise it would use.
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
from ...pipeline_base import LoadInfo, MemoryOptions, ModelDefaults, PipelineBase, unpack_latents
from ...quantize import quantized_matmul_kind
from ...sources import read_model_index, resolve_model_folder
from .components import TEXT_ENCODER_POLICY, TRANSFORMER_POLICY, ComponentLoader  # noqa: F401 (re-exported)
from .schedule import QwenImageSchedule
from .text_encoder import drop_template
from .tokenizer import TEMPLATE_TOKENS, QwenImageTokenizer
from .transformer import QwenImageTransformer
from .vae import QwenImageVAE

PIPELINE_CLASS = "QwenImagePipeline"
# Prompt features are cut to this many tokens (after the template is dropped) unless model_index.json says otherwise.
MAX_SEQUENCE_LENGTH = 512
# The negative prompt when none is given and guidance is on (Qwen-Image's model card uses " ").
DEFAULT_NEGATIVE_PROMPT = " "


class QwenImagePipeline(PipelineBase):
    family = "qwen-image"
    transformer_policy = TRANSFORMER_POLICY
    transformer_class = QwenImageTransformer

    def __init__(self, info: LoadInfo, loader: ComponentLoader, tokenizer: QwenImageTokenizer,
                 schedule: QwenImageSchedule, memory: MemoryOptions):
        self.info = info
        self.loader = loader
        self.tokenizer = tokenizer
        self.schedule = schedule
        self.memory = memory
        self.dtype = getattr(mx, info.dtype)
        self.transformer: QwenImageTransformer | None = None
        self.text_encoder: DecoderLM | None = None
        self.vae: QwenImageVAE = loader.vae()
        self.in_channels = int(open_component(info.folder / "transformer").config.get("in_channels", 64))
        self._preview_matrix: np.ndarray | None = None
        self._prompt_cache: dict[str, mx.array] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, source: str | Path, *, quantize: int | dict | None = None,
             text_encoder_quantize: int | dict | None = None, dtype: mx.Dtype | None = None,
             text_encoder_layers: tuple[int, ...] | None = None, allow_download: bool = True,
             quantized_matmul: str = "auto", memory: MemoryOptions | None = None) -> "QwenImagePipeline":
        """Load a Qwen-Image model folder or repo id, quantizing the transformer on the fly.

        The text encoder stays in full precision unless text_encoder_quantize asks otherwise.
        text_encoder_layers is accepted for a uniform API and ignored: Qwen-Image reads the last
        hidden state. quantized_matmul and memory mean what they mean for Flux2Pipeline.load.
        """
        started = time.perf_counter()
        memory = memory or MemoryOptions()
        folder = resolve_model_folder(source, allow_download=allow_download)
        index = read_model_index(folder)
        pipeline_class = index.get("_class_name", "")
        if pipeline_class != PIPELINE_CLASS:
            raise CheckpointError(f"{folder}: a {pipeline_class or 'unknown'} model, not Qwen-Image ({PIPELINE_CLASS})")
        for name in ("transformer", "text_encoder", "tokenizer", "vae"):
            if not (folder / name).is_dir():
                raise CheckpointError(f"{folder}: component folder '{name}' is missing")
        dtype = dtype or default_compute_dtype()
        if memory.cache_limit is not None:
            mx.set_cache_limit(memory.cache_limit)
        loader = ComponentLoader(folder, dtype, quantize, text_encoder_quantize, quantized_matmul_kind(quantized_matmul))
        loader.check()
        info = LoadInfo(str(source), folder, pipeline_class, ModelDefaults.read(folder), dtype_name(dtype), None, None,
                        (), loader.matmul, int(index.get("max_sequence_length", MAX_SEQUENCE_LENGTH)), loader=loader)
        pipeline = cls(info, loader, QwenImageTokenizer(folder / "tokenizer"), QwenImageSchedule.read(folder), memory)
        pipeline.text_encoder = loader.text_encoder()
        if not memory.evict_text_encoder:
            pipeline.ensure_transformer()
        pipeline._update_bits()
        info.load_seconds = time.perf_counter() - started
        return pipeline

    # ------------------------------------------------------------------ text

    def encode_prompts(self, prompts: list[str]) -> tuple[mx.array, mx.array | None]:
        """Prompt features (B, L, hidden) padded to the longest prompt, and the (B, L) mask of real tokens
        (None when no prompt is padded). Features are cached per prompt while the model stays loaded."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            encoder = self.ensure_text_encoder()
            for prompt in missing:  # one at a time, as the reference encodes: no padding inside the encoder
                self._prompt_cache[prompt] = self._encode_one(encoder, prompt)
            if self.memory.evict_text_encoder:
                self.release_text_encoder()
        features, mask = pad_prompts([self._prompt_cache[p] for p in prompts])
        return features.astype(self.dtype), mask

    def _encode_one(self, encoder: DecoderLM, prompt: str) -> mx.array:
        ids, mask = self.tokenizer.encode([prompt])
        hidden = encoder(mx.array(ids), mx.array(mask))
        features = drop_template(hidden, mask, TEMPLATE_TOKENS)[0][: self.info.max_sequence_length]
        mx.eval(features)
        return features

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
        use_cfg = guidance > 1.0
        h, w = height // self.pixels_per_token, width // self.pixels_per_token
        noise = self._initial_noise(seed, latents, h, w, width, height)
        prompts = [prompt, negative_prompt or DEFAULT_NEGATIVE_PROMPT] if use_cfg else [prompt]

        def denoise(features):
            txt, txt_mask = features
            return self._denoise(noise, txt, txt_mask, steps, guidance, use_cfg, h, w, callback, cancel, preview)

        return self._run(prompts, denoise, h, w, cancel, prompt=prompt,
                         negative_prompt=negative_prompt if use_cfg else None, seed=seed, steps=steps,
                         guidance=guidance, width=width, height=height)

    def _initial_noise(self, seed, latents, h, w, width, height) -> np.ndarray:
        shape = (1, h * w, self.in_channels)
        noise = initial_noise(seed, shape) if latents is None else np.asarray(latents, np.float32)
        if noise.shape != shape:
            raise InvalidRequest(f"latents must have the packed shape {shape} for {width}x{height}, "
                                 f"got {tuple(noise.shape)}")
        return noise

    def _denoise(self, noise, txt, txt_mask, steps, guidance, use_cfg, h, w, callback, cancel, preview):
        transformer = self.transformer
        dtype = txt.dtype
        batch = txt.shape[0]
        x = mx.array(noise).astype(dtype)
        rope = transformer.rope(h, w, txt.shape[1])
        sigmas = self.schedule.sigmas(steps, h * w)

        def velocity_at(x, sigma):
            velocity = transformer(mx.concatenate([x, x]) if use_cfg else x, txt,
                                   mx.array([sigma] * batch, dtype=dtype), rope, txt_mask)
            return rescaled_guidance(velocity[:1], velocity[1:], guidance) if use_cfg else velocity

        return self._euler_steps(x, sigmas, steps, velocity_at, h, w, callback, cancel, preview)

    # ------------------------------------------------------------------ latents -> pixels

    def vae_latents(self, packed: mx.array, h: int, w: int) -> mx.array:
        """(B, h*w, 64) normalized tokens -> (B, 2h, 2w, 16) VAE latents (latents_mean / latents_std undone)."""
        return self.vae.denormalize(unpack_latents(packed.astype(mx.float32), h, w))


def rescaled_guidance(cond: mx.array, uncond: mx.array, scale: float) -> mx.array:
    """True CFG, then each token's velocity scaled back to the norm of the conditional one."""
    cond32, uncond32 = cond.astype(mx.float32), uncond.astype(mx.float32)
    guided = uncond32 + scale * (cond32 - uncond32)
    ratio = mx.linalg.norm(cond32, axis=-1, keepdims=True) / mx.linalg.norm(guided, axis=-1, keepdims=True)
    return (guided * ratio).astype(cond.dtype)


def pad_prompts(features: list[mx.array]) -> tuple[mx.array, mx.array | None]:
    """Stack per-prompt features (L_i, hidden), zero-padded at the end to the longest; the mask is None
    when every prompt has the same length."""
    longest = max(f.shape[0] for f in features)
    if all(f.shape[0] == longest for f in features):
        return mx.stack(features), None
    padded = [mx.pad(f, [(0, longest - f.shape[0]), (0, 0)]) for f in features]
    mask = mx.array([[1] * f.shape[0] + [0] * (longest - f.shape[0]) for f in features])
    return mx.stack(padded), mask


def validate_request(defaults: ModelDefaults, negative_prompt: str | None, guidance: float | None, width: int,
                     height: int, steps: int) -> float:
    """Refuse what Qwen-Image cannot do, in one line; return the guidance to use (the true CFG scale)."""
    check_size(width, height)
    check_steps(steps)
    guidance = defaults.guidance if guidance is None else float(guidance)
    check_scale("guidance", guidance)
    return guidance


def model_defaults(folder: Path) -> ModelDefaults:
    """Qwen-Image's defaults (a base model: 50 steps, true CFG 4.0), read without loading weights."""
    return ModelDefaults.read(folder)
