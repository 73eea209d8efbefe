"""Flux2Transformer2DModel in MLX: the FLUX.2 denoiser (Klein 4B/9B, Klein base, Dev).

Module and parameter names follow the diffusers checkpoint keys, so the weight mapping is the
identity. Differences from FLUX.1 worth knowing when reading: modulation is shared by all blocks
(computed once per step from the timestep embedding), the feed-forward is SwiGLU, single blocks
fuse QKV with the MLP input projection, and RoPE has four axes (t, h, w, l). Attention, RoPE, the
timestep embedding and the output norm are the shared blocks (core/blocks), without biases here.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...blocks.attention import JointAttention, attention_beside
from ...blocks.fast_math import swiglu
from ...blocks.embeddings import TimestepEmbedding, timestep_sinusoid
from ...blocks.modulation import AdaNormOut, gated_add, norm_modulate
from ...blocks.rope import image_position_ids as grid_position_ids, normed_rope, rope_tables
from ...checkpoint import Rule
from ...model_files import config_dataclass


@dataclass(frozen=True)
class Flux2TransformerConfig:
    in_channels: int = 128
    out_channels: int | None = None
    num_layers: int = 8
    num_single_layers: int = 48
    attention_head_dim: int = 128
    num_attention_heads: int = 48
    joint_attention_dim: int = 15360
    timestep_guidance_channels: int = 256
    mlp_ratio: float = 3.0
    axes_dims_rope: tuple[int, ...] = (32, 32, 32, 32)
    rope_theta: float = 2000.0
    eps: float = 1e-6
    guidance_embeds: bool = True
    patch_size: int = 1

    @classmethod
    def from_dict(cls, config: dict) -> "Flux2TransformerConfig":
        return config_dataclass(cls, config, "transformer/config.json", rope_axes=4)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------

class TimeGuidanceEmbed(nn.Module):
    def __init__(self, channels: int, dim: int, guidance_embeds: bool):
        super().__init__()
        self.channels = channels
        self.timestep_embedder = TimestepEmbedding(channels, dim, bias=False)
        if guidance_embeds:
            self.guidance_embedder = TimestepEmbedding(channels, dim, bias=False)

    def __call__(self, timestep: mx.array, guidance: mx.array | None, dtype: mx.Dtype) -> mx.array:
        """`dtype` is the activations' (compute) dtype: the weights may be stored narrower (bf16 kept
        layers of a quantized model on the CPU) and must not set the precision of the embedding."""
        emb = self.timestep_embedder(timestep_sinusoid(timestep, self.channels).astype(dtype))
        if guidance is not None and "guidance_embedder" in self:
            emb = emb + self.guidance_embedder(timestep_sinusoid(guidance, self.channels).astype(dtype))
        return emb.astype(dtype)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

class Modulation(nn.Module):
    """silu(temb) -> Linear -> `sets` triples of (shift, scale, gate), shared by every block."""

    def __init__(self, dim: int, sets: int):
        super().__init__()
        self.sets = sets
        self.linear = nn.Linear(dim, dim * 3 * sets, bias=False)

    def __call__(self, temb: mx.array) -> list[tuple[mx.array, mx.array, mx.array]]:
        chunks = mx.split(self.linear(nn.silu(temb))[:, None, :], 3 * self.sets, axis=-1)
        return [tuple(chunks[3 * i: 3 * i + 3]) for i in range(self.sets)]


class FeedForward(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.linear_in = nn.Linear(dim, hidden * 2, bias=False)
        self.linear_out = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_out(swiglu(self.linear_in(x)))


class DoubleStreamBlock(nn.Module):
    """`transformer_blocks.N`: image and text streams with their own weights, joint attention."""

    def __init__(self, cfg: Flux2TransformerConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.eps = cfg.eps
        self.attn = JointAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim, cfg.eps, bias=False)
        self.ff = FeedForward(dim, cfg.mlp_ratio)
        self.ff_context = FeedForward(dim, cfg.mlp_ratio)

    def __call__(self, img, txt, mod_img, mod_txt, rope):
        (shift, scale, gate), (shift2, scale2, gate2) = mod_img
        (c_shift, c_scale, c_gate), (c_shift2, c_scale2, c_gate2) = mod_txt
        img_attn, txt_attn = self.attn(norm_modulate(img, shift, scale, self.eps),
                                       norm_modulate(txt, c_shift, c_scale, self.eps), rope)
        img = gated_add(img, gate, img_attn)
        img = gated_add(img, gate2, self.ff(norm_modulate(img, shift2, scale2, self.eps)))
        txt = gated_add(txt, c_gate, txt_attn)
        txt = gated_add(txt, c_gate2, self.ff_context(norm_modulate(txt, c_shift2, c_scale2, self.eps)))
        return img, txt


class ParallelSelfAttention(nn.Module):
    """The single block's fused projections: QKV and the MLP input in one Linear, outputs in another."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.head_dim = head_dim
        self.inner = heads * head_dim
        self.mlp_hidden = int(dim * mlp_ratio)
        self.to_qkv_mlp_proj = nn.Linear(dim, 3 * self.inner + 2 * self.mlp_hidden, bias=False)
        self.norm_q = nn.RMSNorm(head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(head_dim, eps=eps)
        self.to_out = nn.Linear(self.inner + self.mlp_hidden, dim, bias=False)

    def __call__(self, x: mx.array, rope: tuple[mx.array, mx.array], outputs_from: int = 0) -> mx.array:
        """The outputs of positions `outputs_from` on: every position is a key and a value, only those are
        queries, and only their MLP and output projection are computed."""
        fused = self.to_qkv_mlp_proj(x)
        qkv, mlp = fused[..., : 3 * self.inner], fused[:, outputs_from:, 3 * self.inner:]
        q, k, v = (t.reshape(*t.shape[:-1], -1, self.head_dim) for t in mx.split(qkv, 3, axis=-1))
        query_rope = tuple(t[..., outputs_from:, :] for t in rope)
        return self.to_out(attention_beside(normed_rope([(self.norm_q, q[:, outputs_from:])], *query_rope),
                                            normed_rope([(self.norm_k, k)], *rope), v, mlp, "swiglu"))


class SingleStreamBlock(nn.Module):
    """`single_transformer_blocks.N`: one stream over the concatenated [text, image] sequence."""

    def __init__(self, cfg: Flux2TransformerConfig):
        super().__init__()
        self.eps = cfg.eps
        self.attn = ParallelSelfAttention(cfg.inner_dim, cfg.num_attention_heads, cfg.attention_head_dim,
                                          cfg.mlp_ratio, cfg.eps)

    def __call__(self, x, mod, rope, outputs_from: int = 0):
        """The block's output for positions `outputs_from` on (the last block: the image's only)."""
        shift, scale, gate = mod[0]
        update = self.attn(norm_modulate(x, shift, scale, self.eps), rope, outputs_from)
        return gated_add(x[:, outputs_from:], gate, update)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class Flux2Transformer(nn.Module):
    def __init__(self, cfg: Flux2TransformerConfig):
        super().__init__()
        self.config = cfg
        dim = cfg.inner_dim
        self.time_guidance_embed = TimeGuidanceEmbed(cfg.timestep_guidance_channels, dim, cfg.guidance_embeds)
        self.double_stream_modulation_img = Modulation(dim, 2)
        self.double_stream_modulation_txt = Modulation(dim, 2)
        self.single_stream_modulation = Modulation(dim, 1)
        self.x_embedder = nn.Linear(cfg.in_channels, dim, bias=False)
        self.context_embedder = nn.Linear(cfg.joint_attention_dim, dim, bias=False)
        self.transformer_blocks = [DoubleStreamBlock(cfg) for _ in range(cfg.num_layers)]
        self.single_transformer_blocks = [SingleStreamBlock(cfg) for _ in range(cfg.num_single_layers)]
        self.norm_out = AdaNormOut(dim, cfg.eps, bias=False)
        out_channels = cfg.out_channels or cfg.in_channels
        self.proj_out = nn.Linear(dim, cfg.patch_size ** 2 * out_channels, bias=False)

    @classmethod
    def from_config(cls, config: dict) -> "Flux2Transformer":
        return cls(Flux2TransformerConfig.from_dict(config))

    def channel_folds(self) -> list[tuple[tuple[str, ...], tuple[tuple[str, tuple[tuple[int, int, int], ...]], ...]]]:
        """Where a per-channel scale folds exactly: [(consumers, ((producer, segments), ...))], a segment
        (first input column, first output row, count) saying which producer rows feed which consumer
        columns. Scaling those consumer columns by s and the producer rows by 1/s leaves the model's
        function unchanged: attention is linear in the values (double blocks mix image and text values,
        so both value projections feed both output projections), and SwiGLU in its value half. The
        other inputs come from the timestep-dependent modulation, which does not fold. For AWQ
        (core/quant/methods/awq.py)."""
        cfg = self.config
        inner, hidden = cfg.inner_dim, int(cfg.inner_dim * cfg.mlp_ratio)
        folds = []
        for i in range(len(self.transformer_blocks)):
            block = f"transformer_blocks.{i}"
            values = ((0, 0, inner),)
            folds.append(((f"{block}.attn.to_out.0", f"{block}.attn.to_add_out"),
                          ((f"{block}.attn.to_v", values), (f"{block}.attn.add_v_proj", values))))
            for ff in ("ff", "ff_context"):
                folds.append(((f"{block}.{ff}.linear_out",), ((f"{block}.{ff}.linear_in", ((0, hidden, hidden),)),)))
        for i in range(len(self.single_transformer_blocks)):
            block = f"single_transformer_blocks.{i}"
            # to_out reads [attention output, SwiGLU output]: the fused projection's value rows, then the
            # value half of its MLP rows.
            segments = ((0, 2 * inner, inner), (inner, 3 * inner + hidden, hidden))
            folds.append(((f"{block}.attn.to_out",), ((f"{block}.attn.to_qkv_mlp_proj", segments),)))
        return folds

    def rope(self, txt_ids: np.ndarray, img_ids: np.ndarray) -> tuple[mx.array, mx.array]:
        """RoPE tables for the joint [text, image] sequence; compute once per generation."""
        ids = np.concatenate([txt_ids, img_ids], axis=0)
        return rope_tables(ids, self.config.axes_dims_rope, self.config.rope_theta)

    def __call__(self, x: mx.array, txt: mx.array, sigma: mx.array, rope: tuple[mx.array, mx.array],
                 guidance: mx.array | None = None) -> mx.array:
        """Predict the flow velocity.

        x: packed image latents (B, N, in_channels); txt: prompt features (B, L, joint_attention_dim);
        sigma: (B,) noise level in [0, 1]; guidance: (B,) for guidance-distilled models (Dev).
        """
        temb = self.time_guidance_embed(sigma * 1000, None if guidance is None else guidance * 1000, x.dtype)
        mod_img = self.double_stream_modulation_img(temb)
        mod_txt = self.double_stream_modulation_txt(temb)
        mod_single = self.single_stream_modulation(temb)
        img, txt = self.x_embedder(x), self.context_embedder(txt)
        for block in self.transformer_blocks:
            img, txt = block(img, txt, mod_img, mod_txt, rope)
        txt_len = txt.shape[1]
        joint = mx.concatenate([txt, img], axis=1)
        singles = self.single_transformer_blocks
        for i, block in enumerate(singles):
            # Only the image's positions are returned: the last block computes no text outputs.
            joint = block(joint, mod_single, rope, txt_len if i == len(singles) - 1 else 0)
        return self.proj_out(self.norm_out(joint if singles else joint[:, txt_len:], temb))


# Checkpoint keys are the module's own names.
TRANSFORMER_RULES = [Rule(r"(.*)", r"\1")]


def text_position_ids(length: int) -> np.ndarray:
    """(t, h, w, l) = (0, 0, 0, i) for each text token."""
    ids = np.zeros((length, 4), dtype=np.int64)
    ids[:, 3] = np.arange(length)
    return ids


def image_position_ids(height: int, width: int) -> np.ndarray:
    """(t, h, w, l) = (0, row, col, 0) for each packed latent, row-major."""
    return grid_position_ids(height, width, axes=4)
