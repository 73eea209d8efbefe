"""The Qwen-Image 2.1 text-to-image pipeline: load a diffusers-layout folder, quantize, generate step by step.

Same API as the other families' pipelines. What is Qwen-Image 2.1's own:
- each prompt goes through a fixed template into Qwen3-VL's language model; the last layer's output
  (before the final norm) loses the system turn's tokens and keeps its own length;
- the transformer computes the prompt's keys and values once per generation (the text stream does not
  depend on the image or the step), then runs the image tokens at each step;
- the base model samples without guidance by default (Qwen's recommendation: 40 steps, guidance 1).
  Guidance above 1 runs true classifier-free guidance with the negative prompt (" " when none is given,
  as diffusers' modular pipeline does), both prompts batched into one pass; a negative prompt with
  guidance 1 is refused rather than ignored;
- Turbo (its model_index.json carries `sample_sigmas`) samples on that grid, without guidance; another
  step count samples the grid resampled to that many points (linear in the step index);
- latents have 64 channels at 1/16 of the image size, one token each (no 2x2 packing), normalized by the
  VAE config's latents_mean / latents_std; the VAE decodes RGBA.
`generate(latents=...)` takes (1, tokens, 64) noise, the layout QwenImage21Pipeline's `latents` takes.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from ...blocks.decoder_lm import DecoderLM
from ...errors import CheckpointError, InvalidRequest
from ...family import PromptTokens
from ...flow_match import FlowMatchSchedule
from ...pipeline_base import ModelDefaults, PipelineBase
from ...sources import read_model_index
from .tokenizer import MAX_PROMPT_TOKENS, QwenImage21Tokenizer

BASE_STEPS = 40  # diffusers' default, Qwen's recommendation
NEGATIVE_WHEN_NONE = " "


class QwenImage21Pipeline(PipelineBase):
    copied_folders = ("scheduler", "processor", "vae")

    @classmethod
    def max_sequence_length(cls, defaults: ModelDefaults) -> int:
        return MAX_PROMPT_TOKENS

    @classmethod
    def prompt_tokens(cls, folder: Path, prompts: list[str], max_length: int) -> PromptTokens:
        """One prompt at a time, as `encode_prompts` runs them: the encoder over the longest templated prompt, the
        transformer over its tokens after the system turn."""
        tokenizer = QwenImage21Tokenizer(Path(folder) / "processor")
        longest = max(tokenizer.encode(prompt, max_length).shape[1] for prompt in prompts)
        return PromptTokens(longest, longest - tokenizer.template_tokens, encoder_batch=1)

    @classmethod
    def prompt_cuts(cls, folder: Path, prompts: list[str], max_length: int) -> list[list]:
        """Qwen-Image 2.1 cuts no prompt: one it cannot take (longer than `max_length`, a vision token) is refused
        here, before anything loads, in the line `encode_prompts` would refuse it with."""
        tokenizer = QwenImage21Tokenizer(Path(folder) / "processor")
        for prompt in prompts:
            tokenizer.encode(prompt, max_length)
        return [[] for _ in prompts]

    def setup(self) -> None:
        folder = self.info.folder
        self.tokenizer = QwenImage21Tokenizer(folder / "processor")
        self.schedule = FlowMatchSchedule.read(folder)
        self.sample_sigmas = sample_sigmas(read_model_index(folder))
        self.in_channels = int(self.family.open_transformer(folder).config.get("in_channels", 64))

    def saved_components(self) -> dict:
        """What `quantbench save` writes: the transformer under diffusers keys, the language model under the
        keys Qwen3-VL checkpoints use (the vision tower is not saved: it is never loaded)."""
        return {"transformer": (self.ensure_transformer(), "", "diffusion_pytorch_model", None),
                "text_encoder": (self.ensure_text_encoder(), "model.language_model.", "model", None)}

    # ------------------------------------------------------------------ text

    def encode_prompts(self, prompts: list[str]) -> list[mx.array]:
        """Each prompt's features (L_i, hidden), cached per prompt while the model stays loaded."""
        def encode(missing: list[str]) -> list[mx.array]:
            encoder = self.ensure_text_encoder()
            return [self._encode_one(encoder, prompt) for prompt in missing]

        return [features.astype(self.dtype) for features in self._cached_features(prompts, encode)]

    def _encode_one(self, encoder: DecoderLM, prompt: str) -> mx.array:
        ids = self.tokenizer.encode(prompt, self.info.max_sequence_length)
        hidden = encoder(mx.array(ids), mx.ones(ids.shape, dtype=mx.int32))
        features = hidden[0, self.tokenizer.template_tokens:]
        mx.eval(features)
        return features

    # ------------------------------------------------------------------ generation

    @property
    def pixels_per_token(self) -> int:
        return self.vae.scale_factor

    negative_when_none = NEGATIVE_WHEN_NONE

    def _denoise(self, noise, features, steps, guidance, use_cfg, h, w, callback, cancel, preview):
        transformer = self.transformer
        dtype = features[0].dtype
        batch = len(features)
        prefix = transformer.text_prefix(features)
        rope = transformer.image_rope(prefix, h, w)
        grid = None if self.sample_sigmas is None else resampled_grid(self.sample_sigmas, steps)
        sigmas = self.schedule.sigmas(steps, h * w, grid)

        def velocity_at(x, sigma):
            velocity = transformer(mx.concatenate([x] * batch) if batch > 1 else x, model_timestep(sigma, dtype, batch),
                                   prefix, rope)
            if not use_cfg:
                return velocity
            cond, uncond = velocity[:1], velocity[1:]
            return uncond + guidance * (cond - uncond)

        return self._euler_steps(mx.array(noise).astype(dtype), sigmas, steps, velocity_at, h, w, callback, cancel,
                                 preview)

    # ------------------------------------------------------------------ latents -> pixels

    def vae_latents(self, packed: mx.array, h: int, w: int) -> mx.array:
        """(B, h*w, 64) normalized tokens -> (B, h, w, 64) VAE latents (latents_mean / latents_std undone)."""
        return self.vae.denormalize(packed.astype(mx.float32).reshape(packed.shape[0], h, w, -1))

    def preview_decode(self, latents: mx.array) -> mx.array:
        """The colour channels of the RGBA decode."""
        return self.vae.decode(latents.astype(self.vae.decoder.conv_in.weight.dtype))[..., :3]


def model_timestep(sigma: float, dtype: mx.Dtype, batch: int) -> mx.array:
    """The noise level the transformer reads: the scheduler's timestep (sigma * 1000, float32) cast to the
    compute dtype and divided by 1000 there, as the reference pipeline hands it over."""
    timestep = mx.array(np.full((batch,), np.float32(sigma) * np.float32(1000.0), dtype=np.float32)).astype(dtype)
    return timestep / 1000


def sample_sigmas(index: dict) -> list[float] | None:
    """The sampling grid a model ships in model_index.json (Turbo), or None."""
    sigmas = index.get("sample_sigmas")
    if sigmas is None:
        return None
    if not isinstance(sigmas, list) or not sigmas or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) for s in sigmas):
        raise CheckpointError("model_index.json: sample_sigmas must be a list of numbers")
    return [float(s) for s in sigmas]


def resampled_grid(grid: list[float], steps: int) -> list[float]:
    """The shipped grid at its own length; at another step count, the grid read at evenly spaced positions
    (linear between its points), so it starts and ends where the distilled model was trained to."""
    if steps == len(grid):
        return grid
    positions = np.linspace(0, len(grid) - 1, steps)
    return [float(v) for v in np.interp(positions, np.arange(len(grid)), np.asarray(grid, np.float64))]


def read_defaults(folder: Path) -> ModelDefaults:
    """Base: 40 steps, no guidance (true CFG available above 1). Turbo: its grid's length, distilled."""
    index = read_model_index(folder)
    grid = sample_sigmas(index)
    if grid is not None:
        return ModelDefaults(True, len(grid), 1.0)
    return ModelDefaults(False, int(index.get("default_steps", BASE_STEPS)), float(index.get("default_guidance", 1.0)))


def check_guidance(defaults: ModelDefaults, negative_prompt: str | None, guidance: float | None) -> float:
    """Refuse what the Qwen-Image 2.1 base model cannot do, in one line; return the guidance to use (the true
    CFG scale)."""
    guidance = defaults.guidance if guidance is None else float(guidance)
    if negative_prompt and guidance <= 1.0:
        raise InvalidRequest("a negative prompt is used only with guidance above 1 (true CFG, two passes per "
                             "step); Qwen-Image 2.1 samples without guidance by default: add --guidance 4")
    return guidance
