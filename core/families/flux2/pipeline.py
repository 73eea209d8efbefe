"""The FLUX.2 text-to-image pipeline: load a diffusers-layout folder, quantize, generate step by step.

Klein (distilled) runs one transformer pass per step with the guidance baked into the weights;
Klein base runs true classifier-free guidance, the conditional and negative prompts batched into
one pass; [dev] (guidance-distilled) runs one pass per step with the guidance scale fed to the
transformer's guidance embedder. Klein encodes prompts with Qwen3, [dev] with Mistral-Small-3.
Latents follow diffusers' layout so that a caller can pass the exact initial noise a diffusers
pipeline would use.

Reference images (multi-reference editing, as diffusers' FLUX.2 pipelines take `image`): each is encoded by the
VAE's encoder (loaded for that and freed), patchified and normalized like the latents, and its tokens join the
image's in every step at time coordinate 10, 20, ... of the 4-axis RoPE; only the image's own tokens are stepped.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from ...checkpoint import open_component
from ...errors import InvalidRequest
from ...pipeline_base import ModelDefaults, PipelineBase, free_buffers, pack_latents, unpack_latents
from ...reference_images import reference_pixels
from ...sources import read_model_index
from .components import text_encoder_kind_for
from .schedule import flux2_sigmas
from .tokenizer import PromptTokenizer
from .transformer import image_position_ids, text_position_ids
from .vae import load_vae_encoder

DEV_PIPELINE_CLASS = "Flux2Pipeline"  # FLUX.2 [dev]: guidance-distilled, Mistral text encoder
REFERENCE_TIME_STEP = 10  # the i-th reference image's tokens sit at time coordinate 10 * (i + 1)


class Flux2Pipeline(PipelineBase):
    @classmethod
    def hidden_states(cls, folder: Path, index: dict, requested: tuple[int, ...] | None) -> tuple[int, ...]:
        """The text encoder's hidden states stacked per token: asked for (or the catalog's, for a known model),
        else model_index.json's `text_encoder_out_layers`, else the encoder's own (Qwen3: 9, 18, 27; Mistral:
        10, 20, 30)."""
        kind = text_encoder_kind_for(open_component(folder / "text_encoder").config)
        return tuple(requested or index.get("text_encoder_out_layers") or kind.default_layers)

    @classmethod
    def prompt_cuts(cls, folder: Path, prompts: list[str], max_length: int) -> list[list]:
        """What `encode_prompts` leaves out of each prompt: the tokenizer truncates at `max_length`."""
        kind = text_encoder_kind_for(open_component(Path(folder) / "text_encoder").config)
        tokenizer = PromptTokenizer(Path(folder) / "tokenizer", kind.chat)
        return [[cut] if (cut := tokenizer.cut(prompt, max_length, kind.name)) else [] for prompt in prompts]

    def setup(self) -> None:
        config = open_component(self.info.folder / "text_encoder").config
        self.tokenizer = PromptTokenizer(self.info.folder / "tokenizer", text_encoder_kind_for(config).chat)
        self.in_channels = int(open_component(self.info.folder / "transformer").config.get("in_channels", 128))

    # ------------------------------------------------------------------ text

    def encode_prompts(self, prompts: list[str]) -> mx.array:
        """Prompt features (B, 512, 3 * hidden), cached per prompt while the model stays loaded."""
        def encode(missing: list[str]) -> list[mx.array]:
            ids, mask = self.tokenizer.encode(missing, self.info.max_sequence_length)
            encoder = self.ensure_text_encoder()
            features = encoder.hidden_states(mx.array(ids), mx.array(mask), self.info.text_encoder_layers)
            mx.eval(features)
            return [features[i] for i in range(len(missing))]

        return mx.stack(self._cached_features(prompts, encode)).astype(self.dtype)

    # ------------------------------------------------------------------ generation

    @classmethod
    def runs_true_cfg(cls, defaults, guidance: float, true_cfg: float = 1.0) -> bool:
        return defaults.guidance_mode == "true-cfg" and guidance > 1.0

    def noise_shape(self, h: int, w: int) -> tuple[int, ...]:
        return (1, self.in_channels, h, w)

    def encode_references(self, images) -> tuple[mx.array, np.ndarray]:
        """Reference images -> their tokens (1, N, 128), normalized as the latents are, and position ids (N, 4)."""
        encoder = load_vae_encoder(self.info.folder / "vae", self.vae.decoder.conv_in.weight.dtype)
        mean, std = self.vae.latent_stats()
        tokens, ids = [], []
        for i, path in enumerate(images):
            z = encoder.encode(mx.array(reference_pixels(path)).astype(encoder.encoder.conv_in.weight.dtype))
            tokens.append(((pack_latents(z.astype(mx.float32)) - mean) / std).astype(self.dtype))
            mx.eval(tokens[-1])
            position = image_position_ids(z.shape[1] // 2, z.shape[2] // 2)
            position[:, 0] = REFERENCE_TIME_STEP * (i + 1)
            ids.append(position)
        del encoder
        free_buffers()
        return mx.concatenate(tokens, axis=1), np.concatenate(ids)

    def _denoise(self, noise, txt, steps, guidance, use_cfg, h, w, callback, cancel, preview, references=None):
        transformer = self.transformer
        dtype = txt.dtype
        batch = txt.shape[0]
        x = mx.array(noise.reshape(1, self.in_channels, h * w).transpose(0, 2, 1)).astype(dtype)
        image_ids = image_position_ids(h, w)
        if references is not None:
            reference_tokens, reference_ids = references
            image_ids = np.concatenate([image_ids, reference_ids])
        rope = transformer.rope(text_position_ids(txt.shape[1]), image_ids)
        guidance_input = mx.array([guidance] * batch, dtype=dtype) \
            if "guidance_embedder" in transformer.time_guidance_embed else None
        sigmas = flux2_sigmas(steps, h * w)

        def velocity_at(x, sigma):
            tokens = x if references is None else mx.concatenate([x, reference_tokens], axis=1)
            velocity = transformer(mx.concatenate([tokens, tokens]) if use_cfg else tokens, txt,
                                   mx.array([sigma] * batch, dtype=dtype), rope, guidance_input)[:, : h * w]
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



def check_guidance(defaults: ModelDefaults, negative_prompt: str | None, guidance: float | None) -> float:
    """Refuse what a base or guidance-distilled model cannot do, in one line; return the guidance to use."""
    if defaults.embedded_guidance and negative_prompt:
        raise InvalidRequest("a negative prompt needs an unconditional pass, and this guidance-distilled model has "
                             "none (one pass per step, the guidance scale goes into the transformer); use guidance")
    return float(defaults.guidance if guidance is None else guidance)


def read_defaults(folder: Path) -> ModelDefaults:
    """What the folder says about itself, read without loading weights: Klein's defaults (4 steps distilled;
    50 steps at CFG 4.0 base) and [dev]'s (50 steps, embedded guidance 4.0, as diffusers' Flux2Pipeline)
    unless model_index.json carries `default_steps` / `default_guidance` (our built-in models do)."""
    index = read_model_index(folder)
    if index.get("_class_name") == DEV_PIPELINE_CLASS:
        return ModelDefaults(False, int(index.get("default_steps", 50)), float(index.get("default_guidance", 4.0)),
                             embedded_guidance=True)
    return ModelDefaults.read(folder)
