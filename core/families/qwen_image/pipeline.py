"""The Qwen-Image text-to-image pipeline: load a diffusers-layout folder, quantize, generate step by step.

The shared pipeline (core/pipeline_base/) with what is Qwen-Image's own:
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

from pathlib import Path

import mlx.core as mx

from ...blocks.decoder_lm import DecoderLM
from ...checkpoint import open_component
from ...family import PromptTokens
from ...pipeline_base import ModelDefaults, PipelineBase, unpack_latents
from .schedule import QwenImageSchedule
from .text_encoder import drop_template
from .tokenizer import TEMPLATE_TOKENS, QwenImageTokenizer

# The negative prompt when none is given and guidance is on (Qwen-Image's model card uses " ").
DEFAULT_NEGATIVE_PROMPT = " "


class QwenImagePipeline(PipelineBase):
    @classmethod
    def prompt_tokens(cls, folder: Path, prompts: list[str], max_length: int) -> PromptTokens:
        """One prompt at a time, as `encode_prompts` runs them: the encoder over the longest templated prompt, the
        transformer over its tokens after the template's first TEMPLATE_TOKENS (at most `max_length`)."""
        tokenizer = QwenImageTokenizer(Path(folder) / "tokenizer")
        longest = max(tokenizer.encode([prompt])[0].shape[1] for prompt in prompts)
        return PromptTokens(longest, min(longest - TEMPLATE_TOKENS, max_length), encoder_batch=1)

    @classmethod
    def prompt_cuts(cls, folder: Path, prompts: list[str], max_length: int) -> list[list]:
        """What `_encode_one` leaves out of each prompt: its features keep `max_length` tokens."""
        tokenizer = QwenImageTokenizer(Path(folder) / "tokenizer")
        return [[cut] if (cut := tokenizer.cut(prompt, max_length)) else [] for prompt in prompts]

    def setup(self) -> None:
        self.tokenizer = QwenImageTokenizer(self.info.folder / "tokenizer")
        self.schedule = QwenImageSchedule.read(self.info.folder)
        self.in_channels = int(open_component(self.info.folder / "transformer").config.get("in_channels", 64))

    # ------------------------------------------------------------------ text

    def encode_prompts(self, prompts: list[str]) -> tuple[mx.array, mx.array | None]:
        """Prompt features (B, L, hidden) padded to the longest prompt, and the (B, L) mask of real tokens
        (None when no prompt is padded). Features are cached per prompt while the model stays loaded."""
        def encode(missing: list[str]) -> list[mx.array]:
            encoder = self.ensure_text_encoder()
            # one at a time, as the reference encodes: no padding inside the encoder
            return [self._encode_one(encoder, prompt) for prompt in missing]

        features, mask = pad_prompts(self._cached_features(prompts, encode))
        return features.astype(self.dtype), mask

    def _encode_one(self, encoder: DecoderLM, prompt: str) -> mx.array:
        ids, mask = self.tokenizer.encode([prompt])
        hidden = encoder(mx.array(ids), mx.array(mask))
        features = drop_template(hidden, mask, TEMPLATE_TOKENS)[0][: self.info.max_sequence_length]
        mx.eval(features)
        return features

    # ------------------------------------------------------------------ generation

    negative_when_none = DEFAULT_NEGATIVE_PROMPT

    def _denoise(self, noise, features, steps, guidance, use_cfg, h, w, callback, cancel, preview):
        txt, txt_mask = features
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


def read_defaults(folder: Path) -> ModelDefaults:
    """Qwen-Image's defaults (a base model: 50 steps, true CFG 4.0), read without loading weights."""
    return ModelDefaults.read(folder)
