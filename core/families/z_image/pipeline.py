"""The Z-Image text-to-image pipeline: load a diffusers-layout folder, quantize, generate step by step.

The shared pipeline (core/pipeline_base/) with what is Z-Image's own (diffusers' ZImagePipeline):
- prompts go through the tokenizer folder's chat template (one user turn, generation prompt, thinking
  left on, so no empty think block), into Qwen3; the penultimate hidden state of the real tokens is
  the prompt, each prompt at its own length;
- Z-Image-Turbo is distilled: 9 steps, one pass each, no guidance and no negative prompt. Z-Image
  (base) runs true classifier-free guidance, the prompt and the negative prompt (default "") batched
  into one pass, combined as diffusers does: cond + guidance x (cond - uncond), so its guidance 4 is a
  classic CFG scale of 5, and guidance 0 runs the conditional pass alone; optionally the guided
  prediction's norm is capped at `cfg_normalization` times the conditional one's, and guidance is
  dropped once the model's time 1 - sigma passes `cfg_truncation`;
- the static shift of the scheduler config (Turbo 3.0, base 6.0) over linspace(1, 1/N, N).
The released folders do not say which is which except by that shift, so a folder is distilled when
model_index.json says `is_distilled`, else when its scheduler's shift is Turbo's.
`generate(latents=...)` takes the (1, 16, H/8, W/8) noise diffusers' ZImagePipeline takes.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from ...blocks.chat_tokenizer import ChatFormat, PromptTokenizer
from ...family import PromptTokens
from ...flow_match import FlowMatchSchedule
from ...generation import CancelToken, GenerationResult, StepCallback
from ...model_files import present
from ...pipeline_base import ModelDefaults, PipelineBase
from ...sources import read_model_index
from .components import penultimate_hidden_state
from .transformer import padded

# One user turn and the generation prompt, thinking on (enable_thinking=True: no empty think block).
CHAT = ChatFormat(template_variables=(("enable_thinking", True),),
                  fallback_template="<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
# The model cards: Turbo 9 steps without guidance; base 50 steps at guidance 4 with a negative prompt.
TURBO_STEPS, BASE_STEPS, BASE_GUIDANCE = 9, 50, 4.0
TURBO_SHIFT = 3.0  # Tongyi-MAI/Z-Image-Turbo's scheduler; Tongyi-MAI/Z-Image's is 6.0
# The released scheduler configs, for a folder that has none.
SCHEDULES = {True: FlowMatchSchedule(shift=TURBO_SHIFT), False: FlowMatchSchedule(shift=6.0)}


class ZImagePipeline(PipelineBase):
    @classmethod
    def hidden_states(cls, folder: Path, index: dict, requested: tuple[int, ...] | None) -> tuple[int, ...]:
        """Z-Image always reads the text encoder's penultimate hidden state."""
        return (penultimate_hidden_state(folder),)

    @classmethod
    def prompt_tokens(cls, folder: Path, prompts: list[str], max_length: int) -> PromptTokens:
        """The prompts batched as `_encode` runs them: the encoder over the longest prompt's real tokens (all
        `max_length` when the tokenizer pads on the left), the transformer over them padded to its multiple of 32."""
        tokenizer = PromptTokenizer(Path(folder) / "tokenizer", CHAT)
        _, mask = tokenizer.encode(prompts, max_length)
        longest = int(mask.sum(axis=1).max())
        return PromptTokens(longest if tokenizer.padding_side == "right" else max_length, padded(longest))

    @classmethod
    def prompt_cuts(cls, folder: Path, prompts: list[str], max_length: int) -> list[list]:
        """What `_encode` leaves out of each prompt: the tokenizer truncates at `max_length`."""
        tokenizer = PromptTokenizer(Path(folder) / "tokenizer", CHAT)
        return [[cut] if (cut := tokenizer.cut(prompt, max_length, "Qwen3")) else [] for prompt in prompts]

    def setup(self) -> None:
        self.tokenizer = PromptTokenizer(self.info.folder / "tokenizer", CHAT)
        self.schedule = read_schedule(self.info.folder)
        self.latent_channels = self.vae.latent_channels
        self.in_channels = 4 * self.latent_channels  # a packed token: one 2x2 patch of latents

    # ------------------------------------------------------------------ text

    def encode_prompts(self, prompts: list[str]) -> tuple[mx.array, list[int]]:
        """Prompt features (B, L, hidden), zero-padded to the longest prompt, and each prompt's length.
        Cached per prompt while the model stays loaded."""
        features = self._cached_features(prompts, self._encode)
        longest = max(f.shape[0] for f in features)
        padded = mx.stack([mx.pad(f, [(0, longest - f.shape[0]), (0, 0)]) for f in features])
        return padded.astype(self.dtype), [f.shape[0] for f in features]

    def _encode(self, prompts: list[str]) -> list[mx.array]:
        """Each prompt's penultimate hidden state over its real tokens (L_i, hidden)."""
        ids, mask = self.tokenizer.encode(prompts, self.info.max_sequence_length)
        if self.tokenizer.padding_side == "right":
            # Causal attention: right padding never reaches the real tokens, so it need not be computed.
            longest = int(mask.sum(axis=1).max())
            ids, mask = ids[:, :longest], mask[:, :longest]
        encoder = self.ensure_text_encoder()
        hidden = encoder.hidden_states(mx.array(ids), mx.array(mask), self.info.text_encoder_layers)
        features = [row[mx.array(np.flatnonzero(keep))] for row, keep in zip(hidden, mask)]
        mx.eval(features)
        return features

    # ------------------------------------------------------------------ generation

    @classmethod
    def runs_true_cfg(cls, defaults, guidance: float, true_cfg: float = 1.0) -> bool:
        return guidance > 0  # diffusers' scale: cond + guidance x (cond - uncond), none at 0

    def generate(self, prompt: str, negative_prompt: str | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, width: int = 1024, height: int = 1024,
                 latents: np.ndarray | None = None, callback: StepCallback | None = None,
                 cancel: CancelToken | None = None, preview: bool = True, cfg_normalization: float = 0.0,
                 cfg_truncation: float = 1.0) -> GenerationResult:
        """Generate one image. guidance: the base model's CFG scale in diffusers' sense (0: no guidance).
        cfg_normalization (> 0: cap the guided norm at that multiple of the conditional one's) and
        cfg_truncation (guidance only while 1 - sigma is at most this) are diffusers' options of the same name."""
        steps = steps or self.default_steps
        guidance = self.validate(negative_prompt, guidance, width, height, steps)
        prompts = list(self.encoded_prompts(self.info.defaults, prompt, negative_prompt, guidance))
        use_cfg = len(prompts) == 2
        h, w = height // self.pixels_per_token, width // self.pixels_per_token
        noise = self._initial_noise(seed, latents, (1, self.latent_channels, 2 * h, 2 * w), width, height)
        guide = Guidance(guidance, cfg_normalization, cfg_truncation) if use_cfg else None

        def denoise(features):
            captions, lengths = features
            return self._denoise(pack(noise), captions, lengths, steps, guide, h, w, callback, cancel, preview)

        return self._run(prompts, denoise, h, w, cancel, prompt=prompt,
                         negative_prompt=negative_prompt if use_cfg else None, seed=seed, steps=steps,
                         guidance=guidance, width=width, height=height)

    def _denoise(self, x, captions, lengths, steps, guide, h, w, callback, cancel, preview):
        transformer = self.transformer
        dtype = captions.dtype
        layouts = {1: transformer.layout(h, w, lengths[:1]), len(lengths): transformer.layout(h, w, lengths)}
        sigmas = self.schedule.sigmas(steps, h * w)

        def predict(tokens: mx.array, t: np.float32, batch: int) -> mx.array:
            return transformer(mx.concatenate([tokens] * batch) if batch > 1 else tokens, captions[:batch],
                               mx.array(np.full(batch, t, dtype=np.float32)), layouts[batch]).astype(mx.float32)

        def velocity_at(x, sigma):
            t, tokens = model_time(sigma), x.astype(dtype)
            if guide is None or not guide.active(t):
                return -predict(tokens, t, 1)
            out = predict(tokens, t, 2)
            return -guide(out[:1], out[1:])

        # x stays float32 between steps, as diffusers keeps its latents.
        return self._euler_steps(mx.array(x), sigmas, steps, velocity_at, h, w, callback, cancel, preview)

    # ------------------------------------------------------------------ latents -> pixels

    def vae_latents(self, packed: mx.array, h: int, w: int) -> mx.array:
        """(B, h*w, 64) tokens -> (B, 2h, 2w, 16) VAE latents (scaling and shift undone)."""
        b, _, c = packed.shape
        z = packed.astype(mx.float32).reshape(b, h, w, 2, 2, c // 4).transpose(0, 1, 3, 2, 4, 5)
        return self.vae.denormalize(z.reshape(b, 2 * h, 2 * w, c // 4))


def pack(noise: np.ndarray) -> np.ndarray:
    """(B, C, 2h, 2w) latents -> (B, h*w, 4C) tokens of 2x2 patches, (row, col, channel) with channels fastest:
    the order ZImageTransformer2DModel's patchify gives its tokens."""
    b, c, height, width = noise.shape
    tokens = noise.reshape(b, c, height // 2, 2, width // 2, 2).transpose(0, 2, 4, 3, 5, 1)
    return np.ascontiguousarray(tokens.reshape(b, (height // 2) * (width // 2), 4 * c))


def model_time(sigma: float) -> np.float32:
    """What ZImagePipeline hands the transformer for noise level sigma: (1000 - 1000 sigma) / 1000, in float32."""
    thousand = np.float32(1000.0)
    return (thousand - np.float32(sigma) * thousand) / thousand


class Guidance:
    """diffusers' ZImagePipeline CFG on the model's float32 outputs: cond + scale (cond - uncond); above
    `normalization` (> 0) times the conditional norm the guided one is scaled back to it; past `truncation`
    of the model's time (1 - sigma) only the conditional pass runs."""

    def __init__(self, scale: float, normalization: float = 0.0, truncation: float = 1.0):
        self.scale, self.normalization, self.truncation = scale, normalization, truncation

    def active(self, t: float) -> bool:
        return not (self.truncation <= 1 and t > self.truncation)

    def __call__(self, cond: mx.array, uncond: mx.array) -> mx.array:
        guided = cond + self.scale * (cond - uncond)
        if self.normalization > 0:
            limit = mx.linalg.norm(cond.reshape(-1)) * self.normalization
            norm = mx.linalg.norm(guided.reshape(-1))
            guided = mx.where(norm > limit, guided * (limit / norm), guided)
        return guided


def read_schedule(folder: Path) -> FlowMatchSchedule:
    return FlowMatchSchedule.read(folder, SCHEDULES[read_defaults(folder).distilled])


def read_defaults(folder: Path) -> ModelDefaults:
    """Turbo (distilled: 9 steps, no guidance) or base (50 steps, guidance 4), read without loading weights:
    model_index.json's `is_distilled`, else the scheduler's shift (the released Turbo's is 3.0, base's 6.0);
    `default_steps` / `default_guidance` there win."""
    index = read_model_index(folder)
    if "is_distilled" in index:
        distilled = bool(index["is_distilled"])
    else:
        path = folder / "scheduler" / "scheduler_config.json"
        config = FlowMatchSchedule.read(folder, SCHEDULES[False]) if present(path) else None
        distilled = config is not None and not config.use_dynamic_shifting and config.shift == TURBO_SHIFT
    steps = int(index.get("default_steps", TURBO_STEPS if distilled else BASE_STEPS))
    return ModelDefaults(distilled, steps, 0.0 if distilled else float(index.get("default_guidance", BASE_GUIDANCE)))
