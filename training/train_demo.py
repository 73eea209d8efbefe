#!/usr/bin/env python
"""Train quantbench's built-in models, `demo` and `demo-turbo`, from scratch on a CPU.

Both are FLUX.2 Klein-style models at toy size, in the diffusers folder layout: a tiny
AutoencoderKLFlux2, a tiny Qwen3 text encoder with its own byte-level BPE tokenizer, and a tiny
Flux2Transformer2DModel, trained on the procedural world of `quantbench.core.builtin.world` (one
shape on one background, 64x64). `demo` is the base model (true CFG, negative prompts, 20 steps);
`demo-turbo` is distilled from it (4 steps, guidance baked in, no negative prompt).

    .venv/bin/python training/train_demo.py --overwrite     # every stage, replacing core/builtin/models/'s
    .venv/bin/python training/train_demo.py --stage distill --overwrite  # one stage; earlier ones' from --work
    .venv/bin/python training/train_demo.py --quick --out /tmp/demo     # a seconds-long smoke run at toy sizes

(.venv is the one ./test.sh sets up: it has torch and the reference implementation.)

Stages, in order (`all` runs them all):
  tokenizer    byte-level BPE on the training captions (core/blocks/tokenizer_files.py)
  vae          the autoencoder (reconstruction + a tiny KL), then the batch-norm statistics of its
               patchified latents, which normalize the transformer's tokens as in FLUX.2
  transformer  the text encoder and the transformer together, on flow matching with caption dropout;
               then a guidance sweep on validation prompts; writes the `demo` folder
  distill      teacher samples from `demo` (default steps, CFG) paired with their noise; a copy of
               the transformer learns the straight paths between them (reflow) at the 4-step
               schedule's noise levels; writes the `demo-turbo` folder
  card         evaluates both models through quantbench's MLX engine at every precision and writes
               each folder's README.md (model card)

Before any training, a bad option, a stage whose inputs no earlier run left, a --out or --work that cannot be
written, a model folder that exists without --overwrite, or a disk without the room for the weights is one
line, exit 2, with nothing written. Each model folder, and each result a stage leaves in --work for the next
(tokenizer/, vae/, latents.pt, demo.pt, the log), is staged beside its destination and renamed into place when
complete (core/atomic.py): a crash or a full disk leaves the earlier one or none. A result of an earlier run that
is damaged anyway (cut short by hand, or by a run from before these writes were staged) is refused in one line
before any training, naming the stage that writes it again.

Every random choice comes from a fixed seed, torch runs on 2 threads, and each stage prints its
loss curve and saves it as JSON (`training_log.json` in each model folder, and in --work).
The conventions (chat-template prompts padded to `max_sequence_length`, hidden states stacked
per token, 2x2-patchified latents normalized by the VAE's batch-norm statistics, FLUX.2's
empirical schedule for 16 image tokens) are exactly those of quantbench's MLX engine and of
diffusers' Flux2KleinPipeline, so the result loads through both unchanged.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

import quantbench.core  # noqa: F401  (first: sets up the BLAS MLX uses, before torch is imported)
from quantbench.core.builtin import captions as captioning
from quantbench.core.builtin import world
from quantbench.core.builtin.analyser import analyse, attribute_accuracy
from quantbench.core.flow_match import time_shift
from quantbench.core.families.flux2.schedule import empirical_mu, flux2_sigmas
from quantbench.core.families.flux2.tokenizer import PromptTokenizer
from quantbench.core.blocks.tokenizer_files import train_tokenizer, write_tokenizer_folder
from quantbench.core.atomic import (OutputError, library_writes, os_error_reason, replace_file, staged_folder,
                                    staged_write)
from quantbench.core.disk_space import check_free_space
from quantbench.core import numbers
from quantbench.core.errors import InvalidRequest
from quantbench.core.generation import MAX_GUIDANCE, MAX_STEPS
from quantbench.core.safetensors import read_safetensors_header

import torch  # noqa: E402

# Under bf16 autocast, RMSNorm warns on every call that it cannot use its fused kernel.
warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "core" / "builtin" / "models"
STAGES = ("tokenizer", "vae", "transformer", "distill", "card")
THREADS = 2
SEED = 20240611
IMAGE_SIZE = world.IMAGE_SIZE
TOKENS = (IMAGE_SIZE // 16) ** 2  # packed image tokens at 64x64: 16 (VAE 8x, then 2x2 patches)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """Sizes and schedules. `QUICK` shrinks everything to a seconds-long smoke run."""

    # tokenizer and prompts
    vocab_request: int = 448  # the BPE saturates below this on the world's 38 words
    max_sequence_length: int = 32
    # VAE (AutoencoderKLFlux2: 4 blocks, so 8x downsampling like the real ones)
    vae_channels: tuple[int, ...] = (16, 32, 64, 64)
    vae_layers_per_block: int = 1
    vae_groups: int = 8
    latent_channels: int = 32
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    # text encoder (Qwen3)
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 2
    text_kv_heads: int = 2
    text_head_dim: int = 64
    text_intermediate: int = 384
    text_out_layers: tuple[int, ...] = (1, 2, 3)
    # transformer (Flux2Transformer2DModel)
    heads: int = 2
    head_dim: int = 64
    double_blocks: int = 2
    single_blocks: int = 3
    mlp_ratio: float = 3.0
    # flow-matching training of text encoder + transformer
    steps: int = 4000
    batch: int = 64
    lr: float = 1e-3
    text_lr: float = 1e-3
    caption_dropout: float = 0.1
    uniform_sigma_share: float = 0.2  # the rest follows the 20-step schedule's density
    ema: float = 0.999
    base_steps: int = 20
    guidance_candidates: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0)  # > 1: the base model always runs true CFG
    monitor_guidance: float = 2.0
    # distillation
    turbo_steps: int = 4
    teacher_pairs: int = 9040  # noise / teacher-sample pairs, two per training scene
    distill_steps: int = 1500
    distill_batch: int = 64
    distill_lr: float = 2e-4
    # data: every `scene_stride`-th training scene (1: all 4520)
    scene_stride: int = 1
    # monitoring
    log_every: int = 100
    validate_every: int = 1000
    validation_prompts: int = 60  # 48 seen pairs + 12 held-out pairs (not the eval set)

    @property
    def joint_attention_dim(self) -> int:
        return len(self.text_out_layers) * self.text_hidden


FULL = Config()
QUICK = replace(
    FULL, vae_channels=(8, 8, 16, 16), vae_groups=4, vae_steps=10, vae_batch=4, text_hidden=64, text_layers=2,
    text_heads=1, text_kv_heads=1, text_intermediate=128, text_out_layers=(1, 2), heads=1, double_blocks=1,
    single_blocks=1, steps=20, batch=8, teacher_pairs=16, distill_steps=10, distill_batch=8, log_every=5,
    validate_every=20, validation_prompts=3, guidance_candidates=(2.0,), scene_stride=40)


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Data: every legible training scene of the world, rendered once
# ---------------------------------------------------------------------------------------------

def training_scenes(stride: int = 1) -> list[world.Scene]:
    """Every legible scene whose colour-shape pair is not held out (4520), in a fixed order; every
    `stride`-th of them for smoke runs."""
    scenes = []
    for shape in world.SHAPES:
        for colour in world.COLOURS:
            if (colour, shape) in world.HELDOUT_COMBINATIONS:
                continue
            for size in world.SIZES:
                for position in world.POSITIONS:
                    for kind, background_colour in world.BACKGROUNDS:
                        scene = world.Scene(shape, colour, size, position, kind, background_colour)
                        if world.is_legible(scene):
                            scenes.append(scene)
    return scenes[::stride]


def validation_scenes(count: int) -> list[world.Scene]:
    """Seeded samples, 80% seen pairs and 20% held-out pairs, apart from the eval set's enumeration."""
    heldout = max(1, count // 5)
    return world.sample_scenes(count - heldout, seed=SEED + 1) + world.sample_scenes(heldout, seed=SEED + 2,
                                                                                     split="heldout")


def render_all(scenes: list[world.Scene]) -> torch.Tensor:
    """(N, 3, 64, 64) float in [-1, 1]."""
    pixels = np.stack([np.asarray(world.render(scene)) for scene in scenes])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, rounded as the engine and diffusers do."""
    return ((images.float().clamp(-1, 1) / 2 + 0.5) * 255).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Model construction (diffusers / transformers classes, the real FLUX.2 Klein structure)
# ---------------------------------------------------------------------------------------------

def vae_config(cfg: Config) -> dict:
    n = len(cfg.vae_channels)
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.vae_channels),
                layers_per_block=cfg.vae_layers_per_block, act_fn="silu", latent_channels=cfg.latent_channels,
                norm_num_groups=cfg.vae_groups, sample_size=IMAGE_SIZE, use_quant_conv=True,
                use_post_quant_conv=True, mid_block_add_attention=True, batch_norm_eps=1e-4,
                batch_norm_momentum=0.1, patch_size=(2, 2))


def build_vae(cfg: Config):
    from diffusers import AutoencoderKLFlux2
    return AutoencoderKLFlux2(**vae_config(cfg))


def text_encoder_config(cfg: Config, vocab_size: int):
    from transformers import Qwen3Config
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads, head_dim=cfg.text_head_dim, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=True, attention_bias=False,
        attention_dropout=0.0, hidden_act="silu", use_sliding_window=False, attn_implementation="sdpa")


def build_text_encoder(cfg: Config, vocab_size: int):
    from transformers import Qwen3ForCausalLM
    return Qwen3ForCausalLM(text_encoder_config(cfg, vocab_size))


def build_transformer(cfg: Config):
    from diffusers import Flux2Transformer2DModel
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * cfg.latent_channels, num_layers=cfg.double_blocks,
        num_single_layers=cfg.single_blocks, attention_head_dim=cfg.head_dim, num_attention_heads=cfg.heads,
        joint_attention_dim=cfg.joint_attention_dim, timestep_guidance_channels=256, mlp_ratio=cfg.mlp_ratio,
        axes_dims_rope=(cfg.head_dim // 4,) * 4, rope_theta=2000, eps=1e-6, guidance_embeds=False)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# The pipeline's conventions, in torch
# ---------------------------------------------------------------------------------------------

def patchify(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4C, H/2, W/2), diffusers' Flux2 `_patchify_latents`."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    return latents.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), row-major tokens."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h * w).permute(0, 2, 1)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, n, c = tokens.shape
    return tokens.permute(0, 2, 1).reshape(b, c, h, w)


def bn_stats(vae) -> tuple[torch.Tensor, torch.Tensor]:
    mean = vae.bn.running_mean.float().view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.float().view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return mean, std


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Posterior means (N, latent_channels, H/8, W/8), as the pipeline's `argmax` latents."""
    vae.eval()
    return torch.cat([vae.encode(images[i:i + batch]).latent_dist.mode().float()
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def decode_tokens(vae, tokens: torch.Tensor) -> torch.Tensor:
    """Normalized packed tokens (B, 16, 128) -> images (B, 3, 64, 64) in about [-1, 1]."""
    side = int(math.isqrt(tokens.shape[1]))
    mean, std = bn_stats(vae)
    latents = unpatchify(unpack(tokens.float(), side, side) * std + mean)
    return vae.decode(latents.to(next(vae.parameters()).dtype)).sample.float()


def position_ids(text_length: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, h, w, l) ids: text (0, 0, 0, i); image (0, row, col, 0)."""
    txt = torch.zeros(text_length, 4, dtype=torch.long)
    txt[:, 3] = torch.arange(text_length)
    img = torch.zeros(side * side, 4, dtype=torch.long)
    img[:, 1] = torch.arange(side * side) // side
    img[:, 2] = torch.arange(side * side) % side
    return txt, img


def text_features(text_encoder, ids: torch.Tensor, mask: torch.Tensor, layers: tuple[int, ...]) -> torch.Tensor:
    """Hidden states `layers` side by side per token, as Flux2KleinPipeline stacks them."""
    out = text_encoder.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    return torch.cat([out.hidden_states[k] for k in layers], dim=-1)


def velocity(transformer, x: torch.Tensor, txt: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    txt_ids, img_ids = position_ids(txt.shape[1], int(math.isqrt(x.shape[1])))
    return transformer(hidden_states=x, encoder_hidden_states=txt, timestep=sigma, img_ids=img_ids,
                       txt_ids=txt_ids, guidance=None, return_dict=False)[0]


@torch.no_grad()
def sample(transformer, cond: torch.Tensor, uncond: torch.Tensor | None, noise: torch.Tensor, steps: int,
           guidance: float) -> torch.Tensor:
    """Euler on FLUX.2's schedule, true CFG when `uncond` is given (one batched pass, as the engine)."""
    sigmas = flux2_sigmas(steps, noise.shape[1])
    x = noise.float()
    use_cfg = uncond is not None and guidance > 1.0
    for i in range(steps):
        sigma = torch.full((len(x),), float(sigmas[i]))
        if use_cfg:
            v = velocity(transformer, torch.cat([x, x]), torch.cat([cond, uncond]), torch.cat([sigma, sigma]))
            v_cond, v_uncond = v.float().chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        else:
            v = velocity(transformer, x, cond, sigma).float()
        x = x + float(sigmas[i + 1] - sigmas[i]) * v
    return x


def noise_for_seed(seed: int, channels: int, side: int) -> torch.Tensor:
    """The engine's initial noise for a seed, packed: (1, side*side, channels)."""
    from quantbench.core.generation import initial_noise
    noise = initial_noise(seed, (1, channels, side, side))
    return pack(torch.from_numpy(noise))


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------

class Prompts:
    """Token ids of every training caption, tokenized by the engine's own PromptTokenizer."""

    def __init__(self, tokenizer_folder: Path, scenes: list[world.Scene], max_length: int):
        self.tokenizer = PromptTokenizer(tokenizer_folder)
        self.max_length = max_length
        captions = [captioning.caption(scene, p) for scene in scenes for p in range(captioning.PHRASINGS)]
        ids, mask = self.tokenizer.encode(captions, max_length)
        n = len(scenes)
        self.ids = torch.from_numpy(ids).view(n, captioning.PHRASINGS, max_length)
        self.mask = torch.from_numpy(mask).view(n, captioning.PHRASINGS, max_length)
        if int(mask.sum(1).max()) >= max_length:
            raise SystemExit(f"a caption fills all {max_length} tokens: raise max_sequence_length")
        empty_ids, empty_mask = self.tokenizer.encode([""], max_length)
        self.empty_ids, self.empty_mask = torch.from_numpy(empty_ids), torch.from_numpy(empty_mask)

    def batch(self, scene_index: torch.Tensor, phrasing: torch.Tensor, drop: torch.Tensor):
        ids = self.ids[scene_index, phrasing].clone()
        mask = self.mask[scene_index, phrasing].clone()
        ids[drop], mask[drop] = self.empty_ids, self.empty_mask
        return ids, mask

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.encode(texts, self.max_length)
        return torch.from_numpy(ids), torch.from_numpy(mask)


# ---------------------------------------------------------------------------------------------
# Stage: tokenizer
# ---------------------------------------------------------------------------------------------

def stage_tokenizer(cfg: Config, work: Path) -> dict:
    scenes = training_scenes(cfg.scene_stride)
    corpus = [captioning.caption(scene, p) for scene in training_scenes() for p in range(captioning.PHRASINGS)]
    # The chat template's own words, so that a rendered prompt is a handful of tokens, not letters.
    corpus += ["user\n", "assistant\n", "\n\n"] * 200
    tokenizer = train_tokenizer(corpus, cfg.vocab_request)
    folder = work / "tokenizer"
    with staged_folder(folder, overwrite=True) as staging, library_writes(folder):  # the earlier one stays until
        write_tokenizer_folder(tokenizer, staging)                                   # this one is whole
    prompts = PromptTokenizer(folder)
    lengths = prompts.encode([c for c in corpus[:len(scenes) * captioning.PHRASINGS]], 128)[1].sum(1)
    info = {"vocab": prompts.vocab_size, "longest_prompt_tokens": int(lengths.max()),
            "empty_prompt_tokens": int(prompts.encode([""], 128)[1].sum())}
    log(f"[tokenizer] {info['vocab']} tokens; rendered prompts are {int(lengths.min())}-{info['longest_prompt_tokens']} "
        f"tokens (padded to {cfg.max_sequence_length})")
    return info


def padded_vocab(tokenizer_folder: Path) -> int:
    """The embedding rows: the tokenizer's size rounded up to a multiple of 64 (Qwen pads its vocab too)."""
    return -(-PromptTokenizer(tokenizer_folder).vocab_size // 64) * 64


# ---------------------------------------------------------------------------------------------
# Stage: VAE
# ---------------------------------------------------------------------------------------------

def cosine_schedule(steps: int, warmup: int, floor: float = 0.1):
    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / max(1, warmup))
        return ramp * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)))
    return factor


def stage_vae(cfg: Config, work: Path) -> dict:
    torch.manual_seed(SEED)
    scenes = training_scenes(cfg.scene_stride)
    images = render_all(scenes)
    vae = build_vae(cfg)
    log(f"[vae] {count_parameters(vae) / 1e6:.2f}M parameters ({count_parameters(vae.decoder) / 1e6:.2f}M "
        f"decoder), {len(scenes)} training images, {cfg.vae_steps} steps of {cfg.vae_batch}")
    optimizer = torch.optim.Adam(vae.parameters(), cfg.vae_lr, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(cfg.vae_steps, 100))
    generator = torch.Generator().manual_seed(SEED)
    curve, window, started = [], [], time.perf_counter()
    vae.train()
    for step in range(1, cfg.vae_steps + 1):
        x = images[torch.randint(0, len(images), (cfg.vae_batch,), generator=generator)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            posterior = vae.encode(x).latent_dist
            y = vae.decode(posterior.mean).sample
        mse = ((y.float() - x) ** 2).mean()
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()
        loss = mse + cfg.vae_kl * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        window.append((mse.item(), kl.item()))
        if step % cfg.log_every == 0 or step == cfg.vae_steps:
            m, k = np.mean(window, axis=0)
            window = []
            point = {"step": step, "mse": round(float(m), 6), "psnr": round(10 * math.log10(4 / m), 2),
                     "kl": round(float(k), 4), "seconds": round(time.perf_counter() - started, 1)}
            curve.append(point)
            log(f"[vae] step {step:5d}  mse {m:.5f}  psnr {point['psnr']:5.2f} dB  kl {k:7.3f}  "
                f"{point['seconds']:.0f}s")
    train_seconds = time.perf_counter() - started

    # The transformer's tokens are the patchified latents normalized per channel, by statistics the
    # VAE carries in its batch-norm buffers (FLUX.2's `bn`).
    latents = patchify(encode_images(vae, images))
    with torch.no_grad():
        vae.bn.running_mean.copy_(latents.mean(dim=(0, 2, 3)))
        vae.bn.running_var.copy_(latents.var(dim=(0, 2, 3)))
        vae.bn.num_batches_tracked.fill_(0)
    quality = reconstruction_quality(vae, scenes, images)
    log(f"[vae] reconstruction of {quality['images']} training images: psnr {quality['psnr']:.2f} dB, analyser "
        f"{quality['accuracy']['mean']:.3f} mean / {quality['accuracy']['all']:.3f} all")
    with staged_folder(work / "vae", overwrite=True) as staging, library_writes(work / "vae"):
        vae.save_pretrained(staging, safe_serialization=True)
    mean, std = bn_stats(vae)
    save_work_file({"tokens": pack((latents - mean) / std)}, work / "latents.pt")
    return {"parameters": count_parameters(vae), "steps": cfg.vae_steps, "batch": cfg.vae_batch,
            "seconds": round(train_seconds, 1), "curve": curve, "reconstruction": quality}


@torch.no_grad()
def reconstruction_quality(vae, scenes: list[world.Scene], images: torch.Tensor, every: int = 9) -> dict:
    """PSNR and analyser accuracy of VAE round trips (through the normalized tokens, as generation ends)."""
    picked = list(range(0, len(scenes), every))
    mean, std = bn_stats(vae)
    tokens = pack((patchify(encode_images(vae, images[picked])) - mean) / std)
    out = to_uint8(decode_tokens(vae, tokens))
    truth = to_uint8(images[picked])
    mse = float(np.mean((out.astype(np.float64) - truth) ** 2))
    results = [analyse(image, scenes[i]) for image, i in zip(out, picked)]
    return {"images": len(picked), "psnr": round(10 * math.log10(255 ** 2 / mse), 2),
            "accuracy": {k: round(v, 4) for k, v in attribute_accuracy(results).items()}}


# ---------------------------------------------------------------------------------------------
# Stage: text encoder + transformer (the `demo` model)
# ---------------------------------------------------------------------------------------------

class EMA:
    def __init__(self, modules: list[torch.nn.Module], decay: float):
        self.decay = decay
        self.copies = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        self.modules = modules

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for module, shadow in zip(self.modules, self.copies):
            for p, s in zip(module.parameters(), shadow.parameters()):
                s.lerp_(p, 1 - decay)


def training_sigmas(n: int, steps: int, uniform_share: float, generator: torch.Generator) -> torch.Tensor:
    """Noise levels distributed like the FLUX.2 schedule's at `steps` steps for 16 tokens, plus a uniform share.

    At 64x64 FLUX.2's empirical shift is strong (e^mu about 6): 20 steps visit sigmas from 1 down to
    0.25 before the final jump to 0, 4 steps from 1 down to 0.7."""
    u = torch.rand(n, generator=generator).clamp(1e-4, 1 - 1e-4)
    shifted = torch.from_numpy(time_shift(empirical_mu(TOKENS, steps), u.numpy()))
    uniform = torch.rand(n, generator=generator).clamp(1e-3, 1.0)
    return torch.where(torch.rand(n, generator=generator) < uniform_share, uniform, shifted)


def stage_transformer(cfg: Config, work: Path, out: Path, overwrite: bool = False) -> dict:
    torch.manual_seed(SEED + 10)
    scenes = training_scenes(cfg.scene_stride)
    prompts = Prompts(work / "tokenizer", scenes, cfg.max_sequence_length)
    tokens = load_work_file(work / "latents.pt")["tokens"]
    vae = load_vae(work / "vae")
    vocab = padded_vocab(work / "tokenizer")
    text_encoder = build_text_encoder(cfg, vocab)
    transformer = build_transformer(cfg)
    log(f"[transformer] text encoder {count_parameters(text_encoder) / 1e6:.2f}M, transformer "
        f"{count_parameters(transformer) / 1e6:.2f}M parameters; {cfg.steps} steps of {cfg.batch}")
    optimizer = torch.optim.AdamW([
        {"params": transformer.parameters(), "lr": cfg.lr},
        {"params": text_encoder.parameters(), "lr": cfg.text_lr},
    ], betas=(0.9, 0.99), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(cfg.steps, 200))
    ema = EMA([text_encoder, transformer], cfg.ema)
    generator = torch.Generator().manual_seed(SEED + 11)
    curve, window, validations, started = [], [], [], time.perf_counter()
    text_encoder.train()
    transformer.train()
    for step in range(1, cfg.steps + 1):
        index = torch.randint(0, len(scenes), (cfg.batch,), generator=generator)
        phrasing = torch.randint(0, captioning.PHRASINGS, (cfg.batch,), generator=generator)
        drop = torch.rand(cfg.batch, generator=generator) < cfg.caption_dropout
        ids, mask = prompts.batch(index, phrasing, drop)
        x0 = tokens[index]
        noise = torch.randn(x0.shape, generator=generator)
        sigma = training_sigmas(cfg.batch, cfg.base_steps, cfg.uniform_sigma_share, generator)
        x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        with torch.autocast("cpu", dtype=torch.bfloat16):
            txt = text_features(text_encoder, ids, mask, cfg.text_out_layers)
            v = velocity(transformer, x_t, txt, sigma)
        loss = ((v.float() - (noise - x0)) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(transformer.parameters()) + list(text_encoder.parameters()), 1.0)
        optimizer.step()
        schedule.step()
        ema.update(step)
        window.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.steps:
            point = {"step": step, "loss": round(float(np.mean(window)), 5),
                     "seconds": round(time.perf_counter() - started, 1)}
            window = []
            curve.append(point)
            log(f"[transformer] step {step:5d}  loss {point['loss']:.4f}  {point['seconds']:.0f}s")
        if step % cfg.validate_every == 0 or step == cfg.steps:
            ema_text, ema_transformer = ema.copies
            accuracy = validate(cfg, prompts, ema_text, ema_transformer, vae, cfg.base_steps, cfg.monitor_guidance)
            validations.append({"step": step, "guidance": cfg.monitor_guidance, **accuracy})
            log(f"[transformer] step {step:5d}  validation (EMA, {cfg.base_steps} steps, CFG {cfg.monitor_guidance:g}): mean "
                f"{accuracy['mean']:.3f}, all {accuracy['all']:.3f}, held-out mean {accuracy['heldout_mean']:.3f}")
    train_seconds = time.perf_counter() - started
    text_encoder, transformer = ema.copies

    sweep = []
    for guidance in cfg.guidance_candidates:
        accuracy = validate(cfg, prompts, text_encoder, transformer, vae, cfg.base_steps, guidance)
        sweep.append({"guidance": guidance, **accuracy})
        log(f"[transformer] guidance {guidance:g}: validation mean {accuracy['mean']:.3f}, all {accuracy['all']:.3f}, "
            f"held-out mean {accuracy['heldout_mean']:.3f}")
    best = max(sweep, key=lambda r: (round(r["mean"], 3), round(r["all"], 3), -r["guidance"]))
    guidance = best["guidance"]
    log(f"[transformer] default guidance {guidance:g}")
    save_work_file({"text_encoder": text_encoder.state_dict(), "transformer": transformer.state_dict(),
                    "vocab": vocab}, work / "demo.pt")
    folder = out / "demo"
    write_model_folder(folder, cfg, work, text_encoder, transformer, distilled=False, steps=cfg.base_steps,
                       guidance=guidance, overwrite=overwrite)
    check_engine_parity(folder, cfg, prompts, text_encoder, transformer)
    return {"text_encoder_parameters": count_parameters(text_encoder),
            "transformer_parameters": count_parameters(transformer), "steps": cfg.steps, "batch": cfg.batch,
            "seconds": round(train_seconds, 1), "curve": curve, "validation": validations,
            "guidance_sweep": sweep, "default_guidance": guidance}


def load_vae(folder: Path):
    from diffusers import AutoencoderKLFlux2
    vae = AutoencoderKLFlux2.from_pretrained(folder, torch_dtype=torch.float32)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def validate(cfg: Config, prompts: Prompts, text_encoder, transformer, vae, steps: int, guidance: float,
             distilled: bool = False) -> dict:
    """Analyser accuracy of generated validation images (seeded noise; not the eval set)."""
    scenes = validation_scenes(cfg.validation_prompts)
    captions = [captioning.caption(scene, i % captioning.PHRASINGS) for i, scene in enumerate(scenes)]
    ids, mask = prompts.encode(captions)
    cond = text_features(text_encoder, ids, mask, cfg.text_out_layers).float()
    uncond = None
    if not distilled:
        empty_ids, empty_mask = prompts.encode([""] * len(scenes))
        uncond = text_features(text_encoder, empty_ids, empty_mask, cfg.text_out_layers).float()
    noise = torch.cat([noise_for_seed(SEED + 1000 + i, 4 * cfg.latent_channels, 4) for i in range(len(scenes))])
    tokens = sample(transformer, cond, uncond, noise, steps, guidance)
    images = to_uint8(decode_tokens(vae, tokens))
    results = [analyse(image, scene) for image, scene in zip(images, scenes)]
    heldout = [r for r, s in zip(results, scenes) if (s.colour, s.shape) in world.HELDOUT_COMBINATIONS]
    accuracy = {k: round(v, 4) for k, v in attribute_accuracy(results).items()}
    accuracy["heldout_mean"] = round(attribute_accuracy(heldout)["mean"], 4) if heldout else None
    return accuracy


# ---------------------------------------------------------------------------------------------
# Stage: distillation (the `demo-turbo` model)
# ---------------------------------------------------------------------------------------------

def stage_distill(cfg: Config, work: Path, out: Path, overwrite: bool = False) -> dict:
    torch.manual_seed(SEED + 20)
    scenes = training_scenes(cfg.scene_stride)
    prompts = Prompts(work / "tokenizer", scenes, cfg.max_sequence_length)
    vae = load_vae(work / "vae")
    saved = load_work_file(work / "demo.pt")
    text_encoder = build_text_encoder(cfg, saved["vocab"])
    text_encoder.load_state_dict(saved["text_encoder"])
    text_encoder.eval().requires_grad_(False)
    teacher = build_transformer(cfg)
    teacher.load_state_dict(saved["transformer"])
    teacher.eval().requires_grad_(False)
    demo_index = json.loads((out / "demo" / "model_index.json").read_text())
    guidance = float(demo_index["default_guidance"])
    teacher_steps = int(demo_index["default_steps"])

    # 1. Teacher samples: each training scene twice (a different phrasing and noise each time).
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(SEED + 21)
    count = cfg.teacher_pairs
    index = torch.arange(count) % len(scenes)
    phrasing = torch.randint(0, captioning.PHRASINGS, (count,), generator=generator)
    noise = torch.randn(count, TOKENS, 4 * cfg.latent_channels, generator=generator)
    targets = torch.empty_like(noise)
    empty_ids, empty_mask = prompts.empty_ids, prompts.empty_mask
    chunk = 256
    with torch.no_grad():
        for start in range(0, count, chunk):
            part = slice(start, min(count, start + chunk))
            n = part.stop - part.start
            ids, mask = prompts.batch(index[part], phrasing[part], torch.zeros(n, dtype=torch.bool))
            cond = text_features(text_encoder, ids, mask, cfg.text_out_layers).float()
            uncond = text_features(text_encoder, empty_ids.expand(n, -1), empty_mask.expand(n, -1),
                                   cfg.text_out_layers).float()
            with torch.autocast("cpu", dtype=torch.bfloat16):  # 3x faster on CPU; targets need no more
                targets[part] = sample(teacher, cond, uncond, noise[part], teacher_steps, guidance)
            if (start // chunk) % 8 == 7 or part.stop == count:
                log(f"[distill] teacher samples {part.stop}/{count}  {time.perf_counter() - started:.0f}s")
    teacher_seconds = time.perf_counter() - started
    log(f"[distill] {count} teacher samples ({teacher_steps} steps, CFG {guidance:g}) in {teacher_seconds:.0f}s")

    # 2. The student starts as the teacher and learns the straight path noise -> teacher sample,
    #    at noise levels distributed like the 4-step schedule's (plus a uniform share).
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(student.parameters(), cfg.distill_lr, betas=(0.9, 0.99), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(cfg.distill_steps, 100))
    ema = EMA([student], cfg.ema)
    curve, window, validations, started = [], [], [], time.perf_counter()
    for step in range(1, cfg.distill_steps + 1):
        pick = torch.randint(0, count, (cfg.distill_batch,), generator=generator)
        ids, mask = prompts.batch(index[pick], phrasing[pick], torch.zeros(cfg.distill_batch, dtype=torch.bool))
        with torch.no_grad():
            txt = text_features(text_encoder, ids, mask, cfg.text_out_layers).float()
        x0, z = targets[pick], noise[pick]
        sigma = training_sigmas(cfg.distill_batch, cfg.turbo_steps, cfg.uniform_sigma_share, generator)
        x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * z
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v = velocity(student, x_t, txt, sigma)
        loss = ((v.float() - (z - x0)) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.update(step)
        window.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.distill_steps:
            point = {"step": step, "loss": round(float(np.mean(window)), 5),
                     "seconds": round(time.perf_counter() - started, 1)}
            window = []
            curve.append(point)
            log(f"[distill] step {step:5d}  loss {point['loss']:.4f}  {point['seconds']:.0f}s")
        if step % cfg.validate_every == 0 or step == cfg.distill_steps:
            accuracy = validate(cfg, prompts, text_encoder, ema.copies[0], vae, cfg.turbo_steps, 1.0,
                                distilled=True)
            validations.append({"step": step, **accuracy})
            log(f"[distill] step {step:5d}  validation (EMA, {cfg.turbo_steps} steps): mean {accuracy['mean']:.3f}, "
                f"all {accuracy['all']:.3f}, held-out mean {accuracy['heldout_mean']:.3f}")
    train_seconds = time.perf_counter() - started
    student = ema.copies[0]
    before = validate(cfg, prompts, text_encoder, teacher, vae, cfg.turbo_steps, 1.0, distilled=True)
    log(f"[distill] for comparison, the teacher itself at {cfg.turbo_steps} steps without CFG: mean "
        f"{before['mean']:.3f}, all {before['all']:.3f}")
    folder = out / "demo-turbo"
    write_model_folder(folder, cfg, work, text_encoder, student, distilled=True, steps=cfg.turbo_steps,
                       guidance=1.0, overwrite=overwrite)
    check_engine_parity(folder, cfg, prompts, text_encoder, student)
    return {"teacher_pairs": count, "teacher_steps": teacher_steps, "teacher_guidance": guidance,
            "teacher_seconds": round(teacher_seconds, 1), "steps": cfg.distill_steps, "batch": cfg.distill_batch,
            "seconds": round(train_seconds, 1), "curve": curve, "validation": validations,
            "teacher_at_turbo_steps": before}


# ---------------------------------------------------------------------------------------------
# Writing a diffusers-layout folder
# ---------------------------------------------------------------------------------------------

def write_model_folder(folder: Path, cfg: Config, work: Path, text_encoder, transformer, distilled: bool,
                       steps: int, guidance: float, overwrite: bool = False) -> None:
    """model_index.json, scheduler/, tokenizer/, text_encoder/, transformer/, vae/ (bfloat16 safetensors).

    Staged in a hidden folder beside `folder` and renamed into place when complete (core/atomic.py): an existing
    `folder` is replaced only with `overwrite` (its model card and training log carried over), and one that
    appeared while the run worked is left as it is."""
    with staged_folder(folder, overwrite) as staging, library_writes(folder):
        shutil.copytree(work / "tokenizer", staging / "tokenizer")
        copy.deepcopy(text_encoder).to(torch.bfloat16).save_pretrained(staging / "text_encoder",
                                                                        safe_serialization=True)
        copy.deepcopy(transformer).to(torch.bfloat16).save_pretrained(staging / "transformer",
                                                                      safe_serialization=True)
        vae = load_vae(work / "vae").to(torch.bfloat16)
        vae.bn.float()  # the normalization statistics stay float32
        vae.save_pretrained(staging / "vae", safe_serialization=True)
        (staging / "scheduler").mkdir()
        (staging / "scheduler" / "scheduler_config.json").write_text(json.dumps({
            "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": _diffusers_version(),
            "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
            "time_shift_type": "exponential", "base_image_seq_len": 256, "max_image_seq_len": 4096,
            "base_shift": 0.5, "max_shift": 1.15}, indent=2))
        index = {
            "_class_name": "Flux2KleinPipeline", "_diffusers_version": _diffusers_version(),
            "is_distilled": distilled,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "Qwen3ForCausalLM"],
            "tokenizer": ["transformers", "Qwen2TokenizerFast"],
            "transformer": ["diffusers", "Flux2Transformer2DModel"],
            "vae": ["diffusers", "AutoencoderKLFlux2"],
            "text_encoder_out_layers": list(cfg.text_out_layers),
            "max_sequence_length": cfg.max_sequence_length,
            "default_steps": steps,
            "default_guidance": guidance,
            "default_width": IMAGE_SIZE,
            "default_height": IMAGE_SIZE,
        }
        (staging / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        for config in staging.glob("*/config.json"):  # no trace of the machine it was trained on
            data = json.loads(config.read_text())
            if data.pop("_name_or_path", None) is not None:
                config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if overwrite and folder.is_dir():
            for name in ("README.md", "training_log.json"):
                if (folder / name).is_file():
                    shutil.copy2(folder / name, staging / name)
        for path in [staging, *staging.rglob("*")]:  # a package wants readable files, whatever the umask
            path.chmod(0o755 if path.is_dir() else 0o644)
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    log(f"wrote {folder} ({size / 1e6:.2f} MB of weights)")


def _diffusers_version() -> str:
    import diffusers
    return diffusers.__version__


def check_engine_parity(folder: Path, cfg: Config, prompts: Prompts, text_encoder, transformer) -> float:
    """Load the written folder through quantbench's MLX engine; compare its first velocity with torch's.

    Both sides use the shipped bfloat16 weights (upcast to float32), so they must agree closely."""
    import mlx.core as mx
    from quantbench.core.families.flux2.pipeline import Flux2Pipeline
    from quantbench.core.families.flux2.transformer import image_position_ids, text_position_ids

    from diffusers import Flux2Transformer2DModel
    from transformers import Qwen3ForCausalLM

    pipe = Flux2Pipeline.load(folder, dtype=mx.float32, allow_download=False)
    text = Qwen3ForCausalLM.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32,
                                            attn_implementation="sdpa").eval()
    model = Flux2Transformer2DModel.from_pretrained(folder / "transformer", torch_dtype=torch.float32).eval()
    caption = captioning.caption(world.sample_scenes(1, seed=SEED)[0])
    ids, mask = prompts.encode([caption])
    with torch.no_grad():
        features = text_features(text, ids, mask, cfg.text_out_layers)
        x = noise_for_seed(0, 4 * cfg.latent_channels, 4)
        v = velocity(model, x, features, torch.tensor([0.9]))
    mlx_features = pipe.encode_prompts([caption])
    rope = pipe.transformer.rope(text_position_ids(mlx_features.shape[1]), image_position_ids(4, 4))
    mlx_v = pipe.transformer(mx.array(x.numpy()), mlx_features, mx.array([0.9]), rope)
    feature_error = float(np.abs(np.array(mlx_features) - features.numpy()).max())
    velocity_error = float(np.abs(np.array(mlx_v) - v.numpy()).max())
    log(f"[parity] {folder.name}: MLX engine vs torch, text features max |diff| {feature_error:.2e}, "
        f"velocity max |diff| {velocity_error:.2e}")
    if feature_error > 1e-2 or velocity_error > 1e-2:
        raise SystemExit(f"{folder}: the MLX engine disagrees with the torch model it was trained as")
    return velocity_error


# ---------------------------------------------------------------------------------------------
# Stage: model cards
# ---------------------------------------------------------------------------------------------

PRECISIONS = ("bf16", "8", "6", "5", "4", "3")


def stage_card(cfg: Config, work: Path, out: Path, logs: dict, quick: bool) -> dict:
    from quantbench.cli.eval import evaluate

    limit = 8 if quick else None
    results = {}
    for name in ("demo", "demo-turbo"):
        started = time.perf_counter()
        results[name] = evaluate(out / name, PRECISIONS, limit=limit, progress=lambda m: log(f"[card] {m}"))
        log(f"[card] {name}: evaluated {len(PRECISIONS)} precisions in {time.perf_counter() - started:.0f}s")
    for name in ("demo", "demo-turbo"):
        replace_file(out / name / "README.md", model_card(name, cfg, logs, results, out).encode())
        log(f"wrote {out / name / 'README.md'}")
    return {name: r for name, r in results.items()}


def _table(result: dict) -> list[str]:
    lines = ["| precision | mean accuracy | all attributes right | held-out pairs (mean) | shape | colour | size | "
             "position | background | PSNR vs unquantized | SSIM vs unquantized |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["results"]:
        a = row["accuracy"]
        psnr = "reference" if row["psnr"] is None else ("identical" if row["psnr"] == float("inf")
                                                        else f"{row['psnr']:.2f} dB")
        ssim = "reference" if row["ssim"] is None else f"{row['ssim']:.4f}"
        held = "-" if row["heldout"] is None else f"{row['heldout']['mean']:.1%}"
        lines.append(f"| {row['precision']} | {a['mean']:.1%} | {a['all']:.1%} | {held} | "
                     f"{a['shape']:.1%} | {a['colour']:.1%} | {a['size']:.1%} | {a['position']:.1%} | "
                     f"{a['background']:.1%} | {psnr} | {ssim} |")
    return lines


def _curve_summary(curve: list[dict], key: str) -> str:
    picks = [curve[0]] + curve[len(curve) // 4:: max(1, len(curve) // 4)] + [curve[-1]]
    seen, parts = set(), []
    for p in picks:
        if p["step"] not in seen:
            seen.add(p["step"])
            parts.append(f"{p['step']}: {p[key]:.4f}")
    return ", ".join(parts)


def model_card(name: str, cfg: Config, logs: dict, results: dict, out: Path) -> str:
    index = json.loads((out / name / "model_index.json").read_text())
    size = sum(p.stat().st_size for p in (out / name).rglob("*.safetensors"))
    vae, tr, distill = logs.get("vae", {}), logs.get("transformer", {}), logs.get("distill", {})
    turbo = name == "demo-turbo"
    mine = results[name]
    lines = [
        f"# {name}: quantbench's built-in {'distilled ' if turbo else ''}FLUX.2 model",
        "",
        ("A 4-step model distilled from `demo`: guidance is baked into the weights, so it takes no negative "
         "prompt and runs one transformer pass per step (like FLUX.2 [klein])." if turbo else
         "The base model: true classifier-free guidance (two passes per step), negative prompts work, "
         f"{index['default_steps']} steps by default (like FLUX.2 [klein] base)."),
        "",
        "It has the FLUX.2 Klein architecture and diffusers folder layout at toy size, trained from scratch by "
        "`training/train_demo.py` on quantbench's procedural world (one shape on one background, 64x64), so "
        "that every code path (loading, text encoding, quantization, CFG, VAE decoding, previews) runs on it "
        "exactly as on Klein, with no download.",
        "",
        "## Architecture",
        "",
        f"- transformer: `Flux2Transformer2DModel`, {cfg.double_blocks} double-stream + {cfg.single_blocks} "
        f"single-stream blocks, {cfg.heads} heads x {cfg.head_dim}, in_channels {4 * cfg.latent_channels}, "
        f"{tr.get('transformer_parameters', 0) / 1e6:.2f}M parameters",
        f"- text encoder: `Qwen3ForCausalLM`, {cfg.text_layers} layers, hidden {cfg.text_hidden}, "
        f"{cfg.text_heads} heads x {cfg.text_head_dim}; hidden states {list(cfg.text_out_layers)} stacked "
        f"({cfg.joint_attention_dim} features per token); prompts padded to {cfg.max_sequence_length} tokens; "
        f"{tr.get('text_encoder_parameters', 0) / 1e6:.2f}M parameters",
        f"- tokenizer: byte-level BPE ({logs.get('tokenizer', {}).get('vocab', '?')} tokens) trained with the "
        "`tokenizers` library on the training captions, Qwen special tokens and a Qwen3-style chat template",
        f"- VAE: `AutoencoderKLFlux2`, block channels {list(cfg.vae_channels)} (8x downsampling), "
        f"{cfg.latent_channels} latent channels, batch-norm statistics of the patchified latents; "
        f"{vae.get('parameters', 0) / 1e6:.2f}M parameters",
        f"- weights: bfloat16 safetensors, {size / 1e6:.2f} MB; native size {IMAGE_SIZE}x{IMAGE_SIZE} "
        f"(16 image tokens)",
        "",
        "## Data",
        "",
        f"Every legible scene of `quantbench.core.builtin.world` except the held-out colour-shape pairs "
        f"({', '.join(' '.join(p) for p in sorted(world.HELDOUT_COMBINATIONS))}): "
        f"{len(training_scenes(cfg.scene_stride))} images, each captioned in {captioning.PHRASINGS} phrasings chosen at random per "
        f"sample; {cfg.caption_dropout:.0%} of captions dropped to the empty prompt (for CFG).",
        "",
        "## Training",
        "",
        f"- VAE: {vae.get('steps')} steps of {vae.get('batch')} images, MSE + {cfg.vae_kl:g} KL, Adam "
        f"{cfg.vae_lr:g} with cosine decay; {vae.get('seconds', 0) / 60:.1f} min. "
        f"Reconstruction PSNR {vae.get('reconstruction', {}).get('psnr', '?')} dB, analyser accuracy on "
        f"reconstructions {vae.get('reconstruction', {}).get('accuracy', {}).get('mean', 0):.1%}.",
        f"- text encoder + transformer, jointly, flow matching (x_t = (1-s) x0 + s noise, target noise - x0; "
        f"s distributed like the {cfg.base_steps}-step FLUX.2 schedule at 16 tokens, {cfg.uniform_sigma_share:.0%} "
        f"uniform): {tr.get('steps')} steps of {tr.get('batch')}, AdamW {cfg.lr:g} with cosine decay, EMA "
        f"{cfg.ema}; {tr.get('seconds', 0) / 60:.1f} min. Loss: {_curve_summary(tr['curve'], 'loss') if tr.get('curve') else '?'}.",
        f"- default guidance {index.get('default_guidance') if not turbo else distill.get('teacher_guidance')}: the "
        "best of a sweep on validation prompts (seeded samples, not the eval set): "
        + ", ".join(f"{r['guidance']:g} -> {r['mean']:.1%}" for r in tr.get("guidance_sweep", [])) + ".",
    ]
    if turbo or distill:
        lines.append(
            f"- demo-turbo: {distill.get('teacher_pairs')} (noise, teacher sample) pairs from `demo` "
            f"({distill.get('teacher_steps')} steps, CFG {distill.get('teacher_guidance')}) on training captions, "
            f"{distill.get('teacher_seconds', 0) / 60:.1f} min; then a copy of the transformer trained on the "
            f"straight paths between them (reflow) at noise levels distributed like the {cfg.turbo_steps}-step "
            f"schedule: {distill.get('steps')} steps of {distill.get('batch')}, AdamW {cfg.distill_lr:g}, EMA; "
            f"{distill.get('seconds', 0) / 60:.1f} min. Loss: "
            f"{_curve_summary(distill['curve'], 'loss') if distill.get('curve') else '?'}. The text encoder and "
            "VAE are demo's, unchanged.")
    wall = logs.get("wall_seconds", {})
    demo_minutes = sum(wall.get(stage, 0) for stage in ("tokenizer", "vae", "transformer")) / 60
    lines += [
        "",
        f"Wall time on a 2-core CPU (torch, 2 threads): `demo` {demo_minutes:.1f} min (tokenizer, VAE, text "
        f"encoder + transformer, guidance sweep), `demo-turbo` {wall.get('distill', 0) / 60:.1f} min more "
        "(teacher samples and distillation). Rebuild both with "
        "`.venv/bin/python training/train_demo.py --overwrite` (fixed seeds).",
        "",
        "The full loss curves are in `training_log.json` beside this card.",
        "",
        "## Measured quality",
        "",
        f"`quantbench eval --model {name} --precisions {','.join(PRECISIONS)}`: the {mine['prompts']} fixed eval "
        f"prompts of `world.eval_prompts()` ({mine['heldout_prompts']} of them with held-out colour-shape pairs), "
        f"seed = prompt index, {mine['width']}x{mine['height']}, {mine['steps']} steps"
        + (f", CFG {mine['guidance']:g}" if not turbo else "") + ". Accuracy is the analyser's "
        "(`core/builtin/analyser.py`) per attribute; \"mean\" averages the five attributes, \"all\" counts "
        "pictures with every attribute right. PSNR/SSIM compare each quantized picture with the unquantized picture of "
        "the same prompt and seed. Quantization applies to the transformer (group size 64; the latent input "
        "and output projections and the first timestep layer stay in full precision, as for Klein).",
        "",
        f"### {name}",
        "",
        *_table(mine),
        "",
    ]
    other = "demo" if turbo else "demo-turbo"
    lines += [f"### {other} (for comparison)", "", *_table(results[other]), ""]
    lines += [
        "## Limits",
        "",
        "- It only knows its world: 5 shapes, 8 colours, 2 sizes, 5 positions, 14 backgrounds, in the "
        "training phrasings; other words are unknown tokens to it.",
        f"- {IMAGE_SIZE}x{IMAGE_SIZE} is its native size; other sizes run but it never saw them.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

@contextmanager
def training_process():
    """Torch as the training wants it (THREADS threads, subnormals flushed to zero), put back afterwards: a
    caller in the same process (the tests) keeps its own floating-point mode. Left flushing, it broke a later
    test's float generator (Hypothesis checks that subnormals exist)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    torch.set_flush_denormal(True)
    _quiet_libraries()
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _quiet_libraries() -> None:
    """No progress bars or advice from transformers/diffusers: the log is the loss curve."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    for module in (diffusers_logging, transformers_logging):
        module.set_verbosity_error()
        module.disable_progress_bar()


# Fields that may be 0 (a loss weight, a share); every other number must be positive.
MAY_BE_ZERO = ("vae_kl", "caption_dropout", "uniform_sigma_share", "ema")
SHARES = ("caption_dropout", "uniform_sigma_share", "ema")  # at most 1 (ema below it)
# The most each field takes (a list's every entry): generous for experiments on a workstation, far below what would
# run for months, allocate terabytes or diverge (a learning rate above 1). The full run's values are well inside.
HIGHEST = {
    "vocab_request": 65536, "max_sequence_length": 1024,
    "vae_channels": 1024, "vae_layers_per_block": 8, "vae_groups": 1024, "latent_channels": 1024,
    "vae_steps": 1_000_000, "vae_batch": 1024, "vae_lr": 1.0, "vae_kl": 1.0,
    "text_hidden": 8192, "text_layers": 64, "text_heads": 128, "text_kv_heads": 128, "text_head_dim": 512,
    "text_intermediate": 32768, "text_out_layers": 64,
    "heads": 128, "head_dim": 512, "double_blocks": 64, "single_blocks": 64, "mlp_ratio": 16.0,
    "steps": 1_000_000, "batch": 1024, "lr": 1.0, "text_lr": 1.0, "caption_dropout": 1.0, "uniform_sigma_share": 1.0,
    "ema": 1.0, "base_steps": MAX_STEPS, "guidance_candidates": MAX_GUIDANCE, "monitor_guidance": MAX_GUIDANCE,
    "turbo_steps": MAX_STEPS, "teacher_pairs": 100_000, "distill_steps": 1_000_000, "distill_batch": 1024,
    "distill_lr": 1.0, "scene_stride": 4520, "log_every": 1_000_000, "validate_every": 1_000_000,
    "validation_prompts": 1000,
}
MAX_PARAMETERS = 1_000_000_000  # the three models together: the demo is a few million; this trains for weeks


def with_overrides(cfg: Config, assignments: list[str]) -> Config:
    """Config with `field=value` overrides, each value parsed as the field's current type. A bad one is an
    InvalidRequest naming it."""
    changes = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        shown = numbers.shown(assignment, 60)  # a paste of thousands of digits is not repeated back whole
        if name not in Config.__dataclass_fields__ or not value.strip():
            raise InvalidRequest(f"--set {shown}: expected FIELD=VALUE with FIELD one of "
                                 f"{', '.join(Config.__dataclass_fields__)}")
        current = getattr(cfg, name)
        kind = (type(current[0]) if current else float) if isinstance(current, tuple) else type(current)
        try:
            values = tuple(_number(kind, v) for v in value.split(","))
        except ValueError:
            what = "whole numbers" if kind is int else "numbers"
            raise InvalidRequest(f"--set {shown}: {name} takes {what}"
                                 + (", separated by commas" if isinstance(current, tuple) else "")) from None
        if not isinstance(current, tuple) and len(values) > 1:
            raise InvalidRequest(f"--set {shown}: {name} takes one number")
        for v in values:
            if v < 0 or (v == 0 and name not in MAY_BE_ZERO) or (name in SHARES and v > 1) or (name == "ema" and v == 1):
                bound = ("0 or more and below 1" if name == "ema" else "from 0 to 1" if name in SHARES
                         else "0 or more" if name in MAY_BE_ZERO else "above 0")
                raise InvalidRequest(f"--set {shown}: {name} must be {bound}")
            if v > HIGHEST[name]:
                raise InvalidRequest(f"--set {shown}: {name} must be at most {HIGHEST[name]:,}")
        changes[name] = values if isinstance(current, tuple) else values[0]
    cfg = replace(cfg, **changes)
    _check_buildable(cfg)
    return cfg


def _number(kind: type, text: str):
    """As a user writes it (core/numbers.py): "1_0", " 10", "١٠", nan and inf are not numbers."""
    return numbers.whole(text) if kind is int else numbers.decimal(text)


def _check_buildable(cfg: Config) -> None:
    """The three models the sizes describe, built without memory (torch's meta device): a size they cannot take
    (channels that do not divide into the groups, a head size RoPE cannot split in 4, a hidden state past the last
    layer) is one line before the long work."""
    if max(cfg.text_out_layers) > cfg.text_layers:
        raise InvalidRequest(f"--set: text_out_layers {','.join(map(str, cfg.text_out_layers))} reads past the text "
                             f"encoder's {cfg.text_layers} layers")
    if cfg.head_dim % 4:
        raise InvalidRequest(f"--set: head_dim {cfg.head_dim} must be a multiple of 4 (4 RoPE axes)")
    try:
        total = sum(model_parameters(cfg, vocab=cfg.vocab_request).values())
    except Exception as error:  # diffusers' and transformers' own checks: ValueError, AssertionError, ...
        raise InvalidRequest(f"--set: these sizes do not make a model ({_flat(str(error)) or type(error).__name__})") \
            from None
    if total > MAX_PARAMETERS:
        raise InvalidRequest(f"--set: these sizes make models of {total:,} parameters together; at most "
                             f"{MAX_PARAMETERS:,} train here (the demo has a few million)")


def model_parameters(cfg: Config, vocab: int) -> dict[str, int]:
    """Parameters of the VAE, the text encoder (with `vocab` embedding rows) and the transformer, counted on models
    built on torch's meta device (nothing allocated)."""
    with torch.device("meta"):
        return {"vae": count_parameters(build_vae(cfg)),
                "text_encoder": count_parameters(build_text_encoder(cfg, vocab)),
                "transformer": count_parameters(build_transformer(cfg))}


def _flat(text: str) -> str:
    """A library's message on one line."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# --work's results between stages: written whole, checked before a later run reads them
# ---------------------------------------------------------------------------------------------

# What each checkpoint in --work holds: its producing stage and the entries a later stage reads.
WORK_FILES = {"latents.pt": ("vae", {"tokens"}), "demo.pt": ("transformer", {"text_encoder", "transformer", "vocab"})}


def save_work_file(data: dict, path: Path) -> None:
    """torch.save into memory, then the bytes staged beside `path` and renamed over it when whole
    (core/atomic.py): a crash or a full disk mid-write leaves the earlier file or none, never half of one. (torch
    writing to the file itself reports a full disk as a RuntimeError of its zip writer, without the reason.)"""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    try:
        with staged_write(path) as f:
            f.write(buffer.getbuffer())
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None


def load_work_file(path: Path, mmap: bool = False) -> dict:
    """A checkpoint an earlier stage left in --work, or one line naming the stage that writes it again."""
    producer, keys = WORK_FILES[path.name]
    if not zipfile.is_zipfile(path):  # torch.save's format; cut short, its central directory (at the end) is gone
        raise damaged(path, producer, "not a whole torch checkpoint: cut short, or not one")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # a pickle that is not ours, a damaged entry: torch's first sentence says which
        raise damaged(path, producer, re.sub(r"^\[Errno \d+\] ", "", _flat(str(error))).split(". ")[0]) from None
    if not isinstance(data, dict) or not keys <= data.keys():
        raise damaged(path, producer, f"not what the {producer} stage writes")
    return data


def check_work_results(path: Path, producer: str) -> None:
    """Refuse in one line, before any training, a result in --work (or a model folder in --out) that an earlier run
    left damaged: a half-written checkpoint (written before these writes were staged, or cut by hand) failed
    mid-stage, after the long work of the stages before it, with a traceback."""
    if path.name in WORK_FILES:
        load_work_file(path, mmap=True)  # mapped, not read: the check costs no memory
        return
    try:
        if path.name == "tokenizer":
            PromptTokenizer(path)
        elif path.name == "vae":
            if not isinstance(json.loads((path / "config.json").read_text(encoding="utf-8")), dict):
                raise ValueError("config.json is not a JSON object")
            read_safetensors_header(path / "diffusion_pytorch_model.safetensors")
        elif path.name == "model_index.json":
            float(json.loads(path.read_text(encoding="utf-8"))["default_guidance"])
    except Exception as error:  # the tokenizers library, json, the safetensors header check, a missing key
        raise damaged(path, producer, _reason_inside(path, error)) from None


def _reason_inside(path: Path, error: Exception) -> str:
    """What is wrong inside `path`, naming its files relative to it (the line names `path` already)."""
    if isinstance(error, KeyError):
        return f"no {error}"
    if isinstance(error, OSError) and error.filename:
        return f"{Path(error.filename).name}: {os_error_reason(error)}"
    return _flat(str(error)).replace(f"{path}/", "").replace(f"{path}: ", "")


def damaged(path: Path, producer: str, why: str) -> InvalidRequest:
    option = "--out" if path.name == "model_index.json" else "--work"
    again = "--overwrite" if option == "--out" else ""
    return InvalidRequest(f"{path}: damaged or incomplete ({why}); run --stage {producer} again with this {option}"
                          f"{' ' + again if again else ''}, or --stage all")


# What each stage reads that an earlier stage wrote: (the producing stage, where: "work" or "out", path).
NEEDS = {
    "transformer": [("tokenizer", "work", "tokenizer"), ("vae", "work", "vae"), ("vae", "work", "latents.pt")],
    "distill": [("tokenizer", "work", "tokenizer"), ("vae", "work", "vae"), ("transformer", "work", "demo.pt"),
                ("transformer", "out", "demo/model_index.json")],
    "card": [("transformer", "out", "demo/model_index.json"), ("distill", "out", "demo-turbo/model_index.json")],
}
WRITES = {"transformer": "demo", "distill": "demo-turbo"}  # the model folder each stage writes in --out


def check_stages(stages: tuple[str, ...], work: Path, out: Path) -> None:
    """What the chosen stages read and no chosen stage writes must be there already."""
    for stage in stages:
        for producer, where, path in NEEDS.get(stage, []):
            folder = work if where == "work" else out
            if producer in stages:
                continue  # written (again) by this run, whole, before it is read
            if not (folder / path).exists():
                option = "--work" if where == "work" else "--out"
                raise InvalidRequest(f"--stage {stage} needs {folder / path}, which the {producer} stage writes: run "
                                     f"--stage {producer} first with this {option}, or --stage all")
            check_work_results(folder / path, producer)


def check_destinations(stages: tuple[str, ...], work: Path, out: Path, overwrite: bool, cfg: Config) -> None:
    """Before the long work: --out and --work can be made and written in, the model folders and cards this run
    writes replace nothing unasked, and each disk has the room for the weights (OutputError, one line)."""
    for option, folder in (("--work", work), ("--out", out)):
        _check_writable_folder(option, folder)
    for stage in stages:
        name = WRITES.get(stage)
        if name is not None and (out / name).exists() and not overwrite:
            raise OutputError(f"{out / name} already exists (pass --overwrite to replace it)")
        if name is not None and (out / name).exists() and not (out / name).is_dir():
            raise OutputError(f"{out / name} exists and is not a folder")
    if "card" in stages and not overwrite:
        for name in ("demo", "demo-turbo"):
            card = out / name / "README.md"
            if card.exists() and not any(WRITES.get(s) == name for s in stages):
                raise OutputError(f"{card} already exists (pass --overwrite to replace it)")
    needs = {}  # file system -> (the folder named, bytes): --work and --out on one disk need the room of both
    for path, nbytes in result_bytes(stages, work, out, cfg).items():
        device = _device(path)
        where, total = needs.get(device, (path.parent, 0))
        needs[device] = (where, total + nbytes)
    for where, nbytes in needs.values():
        check_free_space(where, nbytes, "this training")


def result_bytes(stages: tuple[str, ...], work: Path, out: Path, cfg: Config) -> dict[Path, int]:
    """What the stages write at the least, by destination: the weights' bytes (the tokenizer, configs and logs
    are not counted, so a run that would fit is never refused)."""
    tokenizer = work / "tokenizer"
    try:
        vocab = padded_vocab(tokenizer) if "tokenizer" not in stages and tokenizer.is_dir() else 256
    except Exception:
        vocab = 256  # byte-level BPE: at least the 256 bytes
    params = model_parameters(cfg, vocab)
    sizes = {}
    if "vae" in stages:  # the VAE in float32, and every training scene's latents
        sizes[work / "vae"] = 4 * params["vae"]
        sizes[work / "latents.pt"] = 4 * len(training_scenes(cfg.scene_stride)) * TOKENS * 4 * cfg.latent_channels
    if "transformer" in stages:  # the float32 checkpoint between stages
        sizes[work / "demo.pt"] = 4 * (params["text_encoder"] + params["transformer"])
    for stage in stages:
        if stage in WRITES:  # bfloat16 safetensors
            sizes[out / WRITES[stage]] = 2 * sum(params.values())
    return sizes


def _check_writable_folder(option: str, folder: Path) -> None:
    """`folder` is a folder, or can be made as one, and files can be written in it; nothing is made here."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder}: exists and is not a folder")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {folder}: {existing} is not a folder")
    try:
        probe = tempfile.NamedTemporaryFile(dir=existing, prefix=".write-check.", suffix=".part")
        probe.close()
    except OSError as error:
        raise OutputError(f"{option} {folder}: cannot write in {existing} ({os_error_reason(error)})") from None


def _device(path: Path) -> int:
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    return existing.stat().st_dev


def read_log(path: Path) -> dict:
    """The training log earlier stages left in --work ({} when there is none)."""
    if not path.exists():
        return {}
    try:
        logs = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"{path}: not a training log this script wrote ({_flat(str(error))}); remove it, "
                             "or choose another --work") from None
    if not isinstance(logs, dict):
        raise InvalidRequest(f"{path}: not a training log this script wrote; remove it, or choose another --work")
    return logs


def write_logs(logs: dict, log_path: Path, out: Path, stages: tuple[str, ...]) -> None:
    """The log in --work, and beside each model in --out that this run writes (or writes the card of), each
    replaced atomically; a model folder the run leaves alone keeps its own."""
    text = json.dumps(logs, indent=1).encode()
    replace_file(log_path, text)
    for name in ("demo", "demo-turbo"):
        if (out / name).is_dir() and ("card" in stages or any(WRITES.get(s) == name for s in stages)):
            replace_file(out / name / "training_log.json", text)


def parser() -> argparse.ArgumentParser:
    from quantbench.cli.main import OneLineParser, refuse_empty_values
    parser = OneLineParser(prog="train_demo.py", description=__doc__.split("\n\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", default="all", choices=("all",) + STAGES)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where demo/ and demo-turbo/ go "
                                                                      f"(default {DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace demo/ and demo-turbo/ (and their model cards) in --out if they exist")
    parser.add_argument("--work", type=Path, default=None,
                        help="intermediate results between stages (default: <temp>/quantbench-train-demo[-quick])")
    parser.add_argument("--quick", action="store_true", help="toy sizes and a few steps: a smoke test")
    parser.add_argument("--no-card", action="store_true", help="with --stage all: skip the model cards")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a Config field for an experiment, e.g. --set steps=3000 (repeatable; plain "
                             "numbers, each field within bounds: steps at most 1,000,000, a rate at most 1)")
    refuse_empty_values(parser)  # `--work ''` (an unset shell variable) trained into the current folder
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = parser()
    args = arguments.parse_args(argv)
    work = args.work or Path(tempfile.gettempdir()) / ("quantbench-train-demo" + ("-quick" if args.quick else ""))
    stages = STAGES if args.stage == "all" else (args.stage,)
    if args.no_card:
        stages = tuple(s for s in stages if s != "card")
    try:  # every refusal before the long work, and before anything is written
        cfg = with_overrides(QUICK if args.quick else FULL, args.set)
        log_path = work / "training_log.json"
        logs = read_log(log_path)
        check_stages(stages, work, args.out)
        check_destinations(stages, work, args.out, args.overwrite, cfg)
        for folder in (work, args.out):
            folder.mkdir(parents=True, exist_ok=True)
    except InvalidRequest as error:
        return refuse(str(error))
    except OSError as error:
        return refuse(f"{error.filename or args.out}: cannot be created ({os_error_reason(error)})")
    try:
        with training_process():
            return _train(cfg, stages, work, args, logs, log_path)
    except InvalidRequest as error:  # the final rename refused (a folder appeared meanwhile), a full disk, ...
        return refuse(str(error))
    except OSError as error:  # --work's intermediate results (torch.save, the tokenizer) on a disk that filled up
        return refuse(f"{error.filename or work}: could not be written ({os_error_reason(error)})")


def refuse(message: str) -> int:
    """One line on stderr, as quantbench's commands say what they refuse; the exit status 2."""
    from quantbench.cli.main import one_line
    print(f"quantbench: error: {one_line(message)}", file=sys.stderr)
    return 2


def _train(cfg: Config, stages: tuple[str, ...], work: Path, args, logs: dict, log_path: Path) -> int:
    logs["config"] = asdict(cfg)
    total = time.perf_counter()
    for stage in stages:
        started = time.perf_counter()
        log(f"== stage {stage} ==")
        if stage == "tokenizer":
            logs["tokenizer"] = stage_tokenizer(cfg, work)
        elif stage == "vae":
            logs["vae"] = stage_vae(cfg, work)
        elif stage == "transformer":
            logs["transformer"] = stage_transformer(cfg, work, args.out, args.overwrite)
        elif stage == "distill":
            logs["distill"] = stage_distill(cfg, work, args.out, args.overwrite)
        else:
            logs["card"] = stage_card(cfg, work, args.out, logs, args.quick)
        logs.setdefault("wall_seconds", {})[stage] = round(time.perf_counter() - started, 1)
        write_logs(logs, log_path, args.out, stages)
        log(f"== stage {stage} done in {time.perf_counter() - started:.0f}s ==")
    log(f"done in {time.perf_counter() - total:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
