"""FluxTransformer2DModel in MLX: the FLUX.1 denoiser (schnell and dev).

Module and parameter names follow the diffusers checkpoint keys, so the weight mapping is the
identity (BFL's original single-file layout is mapped in single_file.py). Attention, RoPE, the timestep
embedding, the GELU feed-forward and the output norm are the shared blocks (core/blocks). What sets
FLUX.1 apart from FLUX.2 (core/families/flux2/transformer.py): every
block has its own modulation (norm1.linear, norm1_context.linear, norm.linear), every Linear has a
bias, the feed-forward is a GELU-tanh MLP, RoPE has three axes (t, h, w) with theta 10000, and a
pooled CLIP vector is added to the timestep embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...blocks.attention import JointAttention, attention_beside
from ...blocks.embeddings import TimestepEmbedding, timestep_sinusoid
from ...blocks.feed_forward import GeluFeedForward
from ...blocks.modulation import AdaNormOut, gated_add, norm_modulate
from ...blocks.rope import image_position_ids as grid_position_ids, normed_rope, rope_tables
from ...checkpoint import Rule
from ...model_files import config_dataclass

# diffusers builds these into the model rather than reading them from config.json.
ROPE_THETA = 10000.0
MLP_RATIO = 4.0
NORM_EPS = 1e-6
TIMESTEP_CHANNELS = 256


@dataclass(frozen=True)
class Flux1TransformerConfig:
    patch_size: int = 1
    in_channels: int = 64
    out_channels: int | None = None
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)

    @classmethod
    def from_dict(cls, config: dict) -> "Flux1TransformerConfig":
        return config_dataclass(cls, config, "transformer/config.json", rope_axes=3)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------

class TimeTextEmbed(nn.Module):
    """`time_text_embed`: timestep (+ guidance for dev) sinusoid embeddings plus the pooled CLIP vector."""

    def __init__(self, dim: int, pooled_dim: int, guidance_embeds: bool):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_CHANNELS, dim)
        if guidance_embeds:
            self.guidance_embedder = TimestepEmbedding(TIMESTEP_CHANNELS, dim)
        self.text_embedder = TimestepEmbedding(pooled_dim, dim)

    def __call__(self, timestep: mx.array, guidance: mx.array | None, pooled: mx.array) -> mx.array:
        """timestep and guidance already x1000; the sinusoids are cast to the pooled vector's dtype."""
        dtype = pooled.dtype
        emb = self.timestep_embedder(timestep_sinusoid(timestep, TIMESTEP_CHANNELS).astype(dtype))
        if "guidance_embedder" in self:
            if guidance is None:
                raise ValueError("this transformer embeds guidance (FLUX.1 [dev]): pass a guidance value")
            emb = emb + self.guidance_embedder(timestep_sinusoid(guidance, TIMESTEP_CHANNELS).astype(dtype))
        return emb + self.text_embedder(pooled)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

class AdaLayerNormZero(nn.Module):
    """`norm1` / `norm1_context`: linear(silu(temb)) -> shift, scale, gate for attention, then for the MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)

    def __call__(self, x: mx.array, temb: mx.array):
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = mx.split(self.linear(nn.silu(temb))[:, None], 6, axis=-1)
        return norm_modulate(x, shift, scale, NORM_EPS), gate, (shift_mlp, scale_mlp, gate_mlp)


class AdaLayerNormZeroSingle(nn.Module):
    """`norm` of a single block: one (shift, scale, gate) set."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 3 * dim)

    def __call__(self, x: mx.array, temb: mx.array):
        shift, scale, gate = mx.split(self.linear(nn.silu(temb))[:, None], 3, axis=-1)
        return norm_modulate(x, shift, scale, NORM_EPS), gate


class DoubleStreamBlock(nn.Module):
    """`transformer_blocks.N`: image and text streams with their own weights and modulation."""

    def __init__(self, cfg: Flux1TransformerConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = JointAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim, NORM_EPS)
        self.ff = GeluFeedForward(dim, int(dim * MLP_RATIO))
        self.ff_context = GeluFeedForward(dim, int(dim * MLP_RATIO))

    def __call__(self, img, txt, temb, rope):
        img_normed, gate, (shift_mlp, scale_mlp, gate_mlp) = self.norm1(img, temb)
        txt_normed, c_gate, (c_shift_mlp, c_scale_mlp, c_gate_mlp) = self.norm1_context(txt, temb)
        img_attn, txt_attn = self.attn(img_normed, txt_normed, rope)
        img = gated_add(img, gate, img_attn)
        img = gated_add(img, gate_mlp, self.ff(norm_modulate(img, shift_mlp, scale_mlp, NORM_EPS)))
        txt = gated_add(txt, c_gate, txt_attn)
        txt = gated_add(txt, c_gate_mlp, self.ff_context(norm_modulate(txt, c_shift_mlp, c_scale_mlp, NORM_EPS)))
        return img, txt


class SelfAttention(nn.Module):
    """A single block's attention inputs: QKV projections and QK norms (attention_beside runs it, beside the MLP);
    no output projection of its own."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        inner = heads * head_dim
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, inner) for _ in range(3))
        self.norm_q = nn.RMSNorm(head_dim, eps=NORM_EPS)
        self.norm_k = nn.RMSNorm(head_dim, eps=NORM_EPS)

    def heads(self, x: mx.array, rope: tuple[mx.array, mx.array]) -> tuple[mx.array, mx.array, mx.array]:
        """The queries and keys normed and rotated, and the values, each (B, L, H, D)."""
        q, k, v = (p(x).reshape(*x.shape[:-1], -1, self.head_dim) for p in (self.to_q, self.to_k, self.to_v))
        return normed_rope([(self.norm_q, q)], *rope), normed_rope([(self.norm_k, k)], *rope), v


class SingleStreamBlock(nn.Module):
    """`single_transformer_blocks.N`: attention and the MLP in parallel over the joint [text, image] sequence."""

    def __init__(self, cfg: Flux1TransformerConfig):
        super().__init__()
        dim = cfg.inner_dim
        hidden = int(dim * MLP_RATIO)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, hidden)
        self.attn = SelfAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim)
        self.proj_out = nn.Linear(dim + hidden, dim)

    def __call__(self, x, temb, rope):
        normed, gate = self.norm(x, temb)
        joined = attention_beside(*self.attn.heads(normed, rope), self.proj_mlp(normed), "gelu_tanh")
        return gated_add(x, gate, self.proj_out(joined))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class Flux1Transformer(nn.Module):
    def __init__(self, cfg: Flux1TransformerConfig):
        super().__init__()
        self.config = cfg
        dim = cfg.inner_dim
        if sum(cfg.axes_dims_rope) != cfg.attention_head_dim:
            raise ValueError(f"axes_dims_rope {list(cfg.axes_dims_rope)} must add up to attention_head_dim "
                             f"{cfg.attention_head_dim}")
        self.time_text_embed = TimeTextEmbed(dim, cfg.pooled_projection_dim, cfg.guidance_embeds)
        self.context_embedder = nn.Linear(cfg.joint_attention_dim, dim)
        self.x_embedder = nn.Linear(cfg.in_channels, dim)
        self.transformer_blocks = [DoubleStreamBlock(cfg) for _ in range(cfg.num_layers)]
        self.single_transformer_blocks = [SingleStreamBlock(cfg) for _ in range(cfg.num_single_layers)]
        self.norm_out = AdaNormOut(dim, NORM_EPS)
        out_channels = cfg.out_channels or cfg.in_channels
        self.proj_out = nn.Linear(dim, cfg.patch_size ** 2 * out_channels)

    @classmethod
    def from_config(cls, config: dict) -> "Flux1Transformer":
        return cls(Flux1TransformerConfig.from_dict(config))

    @property
    def embeds_guidance(self) -> bool:
        return "guidance_embedder" in self.time_text_embed

    def rope(self, txt_ids: np.ndarray, img_ids: np.ndarray) -> tuple[mx.array, mx.array]:
        """RoPE tables for the joint [text, image] sequence; compute once per generation."""
        return rope_tables(np.concatenate([txt_ids, img_ids], axis=0), self.config.axes_dims_rope, ROPE_THETA)

    def __call__(self, x: mx.array, txt: mx.array, pooled: mx.array, timestep: mx.array,
                 rope: tuple[mx.array, mx.array], guidance: mx.array | None = None) -> mx.array:
        """Predict the flow velocity.

        x: packed image latents (B, N, in_channels); txt: T5 features (B, L, joint_attention_dim);
        pooled: CLIP pooled output (B, pooled_projection_dim); timestep: (B,) noise level in [0, 1];
        guidance: (B,) embedded guidance scale, for dev only.
        """
        dtype = x.dtype
        temb = self.time_text_embed(timestep.astype(dtype) * 1000,
                                    None if guidance is None else guidance.astype(dtype) * 1000, pooled.astype(dtype))
        img, txt = self.x_embedder(x), self.context_embedder(txt)
        for block in self.transformer_blocks:
            img, txt = block(img, txt, temb, rope)
        txt_len = txt.shape[1]
        joint = mx.concatenate([txt, img], axis=1)
        for block in self.single_transformer_blocks:
            joint = block(joint, temb, rope)
        return self.proj_out(self.norm_out(joint[:, txt_len:], temb))


# Checkpoint keys are the module's own names.
TRANSFORMER_RULES = [Rule(r"(.*)", r"\1")]


def text_position_ids(length: int) -> np.ndarray:
    """(t, h, w) = (0, 0, 0) for every text token: FLUX.1 gives text no position."""
    return np.zeros((length, 3), dtype=np.int64)


def image_position_ids(height: int, width: int) -> np.ndarray:
    """(t, h, w) = (0, row, col) for each packed latent, row-major."""
    return grid_position_ids(height, width)


def pack_latents(latents: np.ndarray) -> np.ndarray:
    """(B, C, 2h, 2w) VAE-space latents -> (B, h*w, 4C) tokens of 2x2 patches, as diffusers packs them."""
    b, c, height, width = latents.shape
    patches = latents.reshape(b, c, height // 2, 2, width // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (height // 2) * (width // 2), c * 4)
