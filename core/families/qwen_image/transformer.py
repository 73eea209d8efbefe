"""QwenImageTransformer2DModel in MLX: Qwen-Image's denoiser.

Module and parameter names follow the diffusers checkpoint keys, so the weight mapping is the
identity. Attention, RoPE, the GELU feed-forward and the output norm are the shared blocks (core/blocks).
What differs from FLUX.2 when reading: every block is dual-stream (no single blocks) and
computes its own modulation from the timestep embedding (`img_mod`, `txt_mod`); the prompt features
go through an RMSNorm before `txt_in`; every Linear has a bias; the MLP is GELU (tanh); and the
image RoPE is centred: rows and columns count from minus half the grid, the text tokens continue
after the largest image position, the same position on all three axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...blocks.attention import JointAttention
from ...blocks.embeddings import TimestepEmbedding
from ...blocks.feed_forward import GeluFeedForward
from ...blocks.modulation import AdaNormOut, gated_add, norm_modulate
from ...blocks.rope import image_position_ids as grid_position_ids, rope_tables
from ...checkpoint import Rule
from ...errors import CheckpointError
from ...model_files import config_dataclass

EPS = 1e-6
ROPE_THETA = 10000.0
TIMESTEP_CHANNELS = 256

# Flags of later Qwen-Image variants (Edit-2511, Layered) whose conditioning this engine does not implement.
_UNSUPPORTED_FLAGS = ("guidance_embeds", "zero_cond_t", "use_additional_t_cond", "use_layer3d_rope")


@dataclass(frozen=True)
class QwenImageTransformerConfig:
    patch_size: int = 2
    in_channels: int = 64
    out_channels: int | None = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)

    @classmethod
    def from_dict(cls, config: dict) -> "QwenImageTransformerConfig":
        enabled = [flag for flag in _UNSUPPORTED_FLAGS if config.get(flag)]
        if enabled:
            raise CheckpointError(f"transformer config sets {', '.join(enabled)}: a Qwen-Image variant quantbench "
                                  "does not support (only text-to-image Qwen-Image)")
        return config_dataclass(cls, config, "transformer/config.json", rope_axes=3)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


# ---------------------------------------------------------------------------------------------
# Timestep embedding and positions
# ---------------------------------------------------------------------------------------------

def timestep_sinusoid(sigma: mx.array, channels: int = TIMESTEP_CHANNELS) -> mx.array:
    """[cos, sin] of sigma * freqs * 1000, multiplied in the reference's order (angles reach 1000 rad,
    so the float32 rounding of the product shows at parity tolerance)."""
    half = channels // 2
    freqs = mx.exp(-math.log(10000.0) * mx.arange(half, dtype=mx.float32) / half)
    args = (sigma.astype(mx.float32)[:, None] * freqs[None, :]) * 1000.0
    return mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)


class TimeTextEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_CHANNELS, dim)

    def __call__(self, sigma: mx.array, dtype: mx.Dtype) -> mx.array:
        return self.timestep_embedder(timestep_sinusoid(sigma).astype(dtype)).astype(dtype)


def image_position_ids(height: int, width: int) -> np.ndarray:
    """(frame, row, col) per packed latent, row-major; rows and columns centred on the grid's middle."""
    return grid_position_ids(height, width, first_row=-(height - height // 2), first_column=-(width - width // 2))


def text_position_ids(length: int, height: int, width: int) -> np.ndarray:
    """Text tokens continue after the largest image position, with the same value on every axis."""
    start = max(height // 2, width // 2)
    return np.repeat((start + np.arange(length, dtype=np.int64))[:, None], 3, axis=1)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

def modulation(dim: int) -> list[nn.Module]:
    """`img_mod` / `txt_mod`: SiLU then Linear to two (shift, scale, gate) triples; a list so the keys read `.1.`."""
    return [nn.SiLU(), nn.Linear(dim, 6 * dim)]


def triples(mod: list[nn.Module], temb: mx.array):
    chunks = mx.split(mod[1](mod[0](temb))[:, None, :], 6, axis=-1)
    return chunks[:3], chunks[3:]


class TransformerBlock(nn.Module):
    """`transformer_blocks.N`: image and text streams with their own weights and modulation, joint attention."""

    def __init__(self, cfg: QwenImageTransformerConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.img_mod = modulation(dim)
        self.txt_mod = modulation(dim)
        self.attn = JointAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim, EPS)
        self.img_mlp = GeluFeedForward(dim, 4 * dim)
        self.txt_mlp = GeluFeedForward(dim, 4 * dim)

    def __call__(self, img, txt, temb, rope, mask):
        (shift, scale, gate), (shift2, scale2, gate2) = triples(self.img_mod, temb)
        (c_shift, c_scale, c_gate), (c_shift2, c_scale2, c_gate2) = triples(self.txt_mod, temb)
        img_attn, txt_attn = self.attn(norm_modulate(img, shift, scale, EPS),
                                       norm_modulate(txt, c_shift, c_scale, EPS), rope, mask)
        img = gated_add(img, gate, img_attn)
        txt = gated_add(txt, c_gate, txt_attn)
        img = gated_add(img, gate2, self.img_mlp(norm_modulate(img, shift2, scale2, EPS)))
        txt = gated_add(txt, c_gate2, self.txt_mlp(norm_modulate(txt, c_shift2, c_scale2, EPS)))
        return img, txt


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class QwenImageTransformer(nn.Module):
    def __init__(self, cfg: QwenImageTransformerConfig):
        super().__init__()
        self.config = cfg
        dim = cfg.inner_dim
        self.time_text_embed = TimeTextEmbed(dim)
        self.txt_norm = nn.RMSNorm(cfg.joint_attention_dim, eps=EPS)
        self.img_in = nn.Linear(cfg.in_channels, dim)
        self.txt_in = nn.Linear(cfg.joint_attention_dim, dim)
        self.transformer_blocks = [TransformerBlock(cfg) for _ in range(cfg.num_layers)]
        self.norm_out = AdaNormOut(dim, EPS)
        out_channels = cfg.out_channels or cfg.in_channels
        self.proj_out = nn.Linear(dim, cfg.patch_size ** 2 * out_channels)

    @classmethod
    def from_config(cls, config: dict) -> "QwenImageTransformer":
        return cls(QwenImageTransformerConfig.from_dict(config))

    def rope(self, height: int, width: int, txt_len: int) -> tuple[mx.array, mx.array]:
        """RoPE tables for the joint [text, image] sequence of an (height x width)-token image; once per generation."""
        ids = np.concatenate([text_position_ids(txt_len, height, width), image_position_ids(height, width)])
        return rope_tables(ids, self.config.axes_dims_rope, ROPE_THETA, np.float32)  # as the reference: float32

    def __call__(self, x: mx.array, txt: mx.array, sigma: mx.array, rope: tuple[mx.array, mx.array],
                 txt_mask: mx.array | None = None) -> mx.array:
        """Predict the flow velocity.

        x: packed image latents (B, N, in_channels); txt: prompt features (B, L, joint_attention_dim);
        sigma: (B,) noise level in [0, 1]; txt_mask: (B, L), nonzero for real tokens (None: all real).
        """
        temb = self.time_text_embed(sigma, x.dtype)
        img, txt = self.img_in(x), self.txt_in(self.txt_norm(txt))
        mask = None if txt_mask is None else key_mask(txt_mask, img.shape[1])
        for block in self.transformer_blocks:
            img, txt = block(img, txt, temb, rope, mask)
        return self.proj_out(self.norm_out(img, temb))


def key_mask(txt_mask: mx.array, image_tokens: int) -> mx.array:
    """(B, 1, 1, L + N) boolean: padded text tokens are hidden from every query; image tokens never are."""
    image = mx.ones((txt_mask.shape[0], image_tokens), dtype=mx.bool_)
    return mx.concatenate([txt_mask.astype(mx.bool_), image], axis=1)[:, None, None, :]


# Checkpoint keys are the module's own names.
TRANSFORMER_RULES = [Rule(r"(.*)", r"\1")]
