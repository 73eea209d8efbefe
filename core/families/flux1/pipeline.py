"""The FLUX.1 text-to-image pipeline (schnell and dev): load a diffusers-layout folder, quantize, generate.

schnell is timestep-distilled: 4 steps, no guidance input, no negative prompt. dev is guidance-
distilled: the guidance scale (3.5 by default) is an input of the transformer and one pass per step
does; true classifier-free guidance with a negative prompt (diffusers' `true_cfg_scale`) is optional
and costs a second pass, batched with the first. Prompts go through CLIP (pooled vector) and T5
(per-token features). Latents follow diffusers' layout, so a caller can pass the exact initial noise
a diffusers FluxPipeline would use: (1, 16, H/8, W/8), packed into 2x2 patches here.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import mlx.core as mx
import numpy as np

from ...errors import InvalidRequest
from ...generation import CancelToken, GenerationResult, StepCallback
from ...model_files import present
from ...pipeline_base import ModelDefaults, PipelineBase, unpack_latents
from ...sources import read_model_index
from .clip import CLIPTextEncoder
from .components import transformer_checkpoint
from .schedule import Flux1Schedule, timestep_input
from .single_file import open_transformer
from .t5 import T5Encoder
from .tokenizers import ClipTokenizer, T5Tokenizer
from .transformer import image_position_ids, pack_latents, text_position_ids

# T5 prompt length unless model_index.json says otherwise: BFL's reference code pads schnell's
# prompts to 256 tokens and dev's to 512.
SEQUENCE_LENGTH = {True: 256, False: 512}  # by `distilled`
DEV_STEPS, DEV_GUIDANCE, SCHNELL_STEPS = 28, 3.5, 4
# The scheduler_config.json of the FLUX.1 repositories, for a folder that has none.
SCHEDULES = {True: Flux1Schedule(), False: Flux1Schedule(use_dynamic_shifting=True, shift=3.0)}


class TextEncoders(NamedTuple):
    clip: CLIPTextEncoder
    t5: T5Encoder


class Flux1Pipeline(PipelineBase):
    @classmethod
    def max_sequence_length(cls, defaults: ModelDefaults) -> int:
        return SEQUENCE_LENGTH[defaults.distilled]

    @classmethod
    def load_notes(cls, folder: Path) -> dict:
        return {"transformer_source": open_transformer(folder).description}

    @classmethod
    def prompt_cuts(cls, folder: Path, prompts: list[str], max_length: int) -> list[list]:
        """What `encode_prompts` leaves out of each prompt: CLIP reads at most 77 tokens, T5 `max_length`."""
        clip, t5 = ClipTokenizer(Path(folder) / "tokenizer"), T5Tokenizer(Path(folder) / "tokenizer_2")
        return [[cut for cut in (clip.cut(prompt), t5.cut(prompt, max_length)) if cut] for prompt in prompts]

    def setup(self) -> None:
        folder = self.info.folder
        self.clip_tokenizer, self.t5_tokenizer = ClipTokenizer(folder / "tokenizer"), T5Tokenizer(folder / "tokenizer_2")
        self.schedule = read_schedule(folder, self.info.defaults.distilled)

    def _load_text_encoder(self) -> TextEncoders:
        """Both text encoders (CLIP and T5): they are loaded, used and released together."""
        return TextEncoders(self.loader.text_encoder("text_encoder"), self.loader.text_encoder("text_encoder_2"))

    # ------------------------------------------------------------------ saving (core/saved_models.py)

    copied_folders = ("scheduler", "tokenizer", "tokenizer_2", "vae")

    def saved_components(self) -> dict:
        """What `save_quantized` writes: folder -> (module, checkpoint key prefix, weight file stem, config).
        Every module's parameter names are its checkpoint keys; a config is given only where the source has
        no config.json to copy (a single-file transformer whose config was read off its shapes)."""
        encoders = self.ensure_text_encoder()
        transformer = self.ensure_transformer()
        has_config = present(self.info.folder / "transformer" / "config.json")
        return {"transformer": (transformer, "", "diffusion_pytorch_model",
                                None if has_config else transformer_checkpoint(self.info.folder).config),
                "text_encoder": (encoders.clip, "", "model", None),
                "text_encoder_2": (encoders.t5, "", "model", None)}

    # ------------------------------------------------------------------ text

    def encode_prompts(self, prompts: list[str]) -> tuple[mx.array, mx.array]:
        """T5 features (B, max_sequence_length, d_model) and CLIP pooled vectors (B, hidden), cached per prompt."""
        def encode(missing: list[str]) -> list[tuple[mx.array, mx.array]]:
            clip, t5 = self.ensure_text_encoder()
            pooled = clip.pooled(self.clip_tokenizer.encode(missing))
            features = t5(self.t5_tokenizer.encode(missing, self.info.max_sequence_length))
            mx.eval(features, pooled)
            return [(features[i], pooled[i]) for i in range(len(missing))]

        cached = self._cached_features(prompts, encode)
        features = mx.stack([f for f, _ in cached]).astype(self.dtype)
        return features, mx.stack([pooled for _, pooled in cached]).astype(self.dtype)

    # ------------------------------------------------------------------ generation

    @classmethod
    def runs_true_cfg(cls, defaults, guidance: float, true_cfg: float = 1.0) -> bool:
        return true_cfg > 1.0  # the guidance is embedded; true CFG has a scale of its own

    def generate(self, prompt: str, negative_prompt: str | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, width: int = 1024, height: int = 1024,
                 latents: np.ndarray | None = None, callback: StepCallback | None = None,
                 cancel: CancelToken | None = None, preview: bool = True, true_cfg: float = 1.0) -> GenerationResult:
        """Generate one image. guidance: dev's embedded guidance (default 3.5; schnell has none).
        true_cfg: above 1, true classifier-free guidance against `negative_prompt` (or the empty prompt),
        two transformer passes per step, as diffusers' `true_cfg_scale` (dev only)."""
        steps = steps or self.default_steps
        guidance = self.validate(negative_prompt, guidance, width, height, steps, true_cfg)
        prompts = list(self.encoded_prompts(self.info.defaults, prompt, negative_prompt, guidance, true_cfg))
        use_cfg = len(prompts) == 2
        h, w = height // self.pixels_per_token, width // self.pixels_per_token
        shape = (1, self.vae.latent_channels, 2 * h, 2 * w)
        noise = self._initial_noise(seed, latents, shape, width, height)

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


def read_defaults(folder: Path) -> ModelDefaults:
    """A FLUX.1 folder's defaults without loading anything (the transformer's config or headers only).
    schnell (no guidance embedder): distilled, 4 steps, no guidance. dev: 28 steps, embedded guidance 3.5.
    model_index.json's `default_steps` / `default_guidance` win where present."""
    index = read_model_index(folder)
    distilled = not transformer_checkpoint(folder).config.get("guidance_embeds", False)
    steps = int(index.get("default_steps", SCHNELL_STEPS if distilled else DEV_STEPS))
    return ModelDefaults(distilled, steps, 0.0 if distilled else float(index.get("default_guidance", DEV_GUIDANCE)),
                         embedded_guidance=not distilled)


def read_schedule(folder: Path, distilled: bool) -> Flux1Schedule:
    return Flux1Schedule.read(folder, SCHEDULES[distilled])


def check_guidance(defaults: ModelDefaults, negative_prompt: str | None, guidance: float | None,
                   true_cfg: float = 1.0) -> float:
    """Refuse what this model cannot do, in one line; return the guidance to embed (0 for schnell)."""
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
    return float(defaults.guidance if guidance is None else guidance)
