"""ZImageTransformer2DModel in MLX: Z-Image's single-stream denoiser (S3-DiT).

Module and parameter names follow the diffusers checkpoint keys (`all_x_embedder.2-1`, `layers.N.attention.to_q`,
`t_embedder.mlp.0`...), so the diffusers layout loads with the identity mapping; the original training
code's layout (fused `attention.qkv`, `x_embedder`, `final_layer`) is mapped in components.py.

What is Z-Image's own, when reading:
- image tokens and prompt tokens are refined apart first (`noise_refiner`, modulated by the timestep;
  `context_refiner`, not modulated), then run as one sequence [image, prompt] through `layers`;
- every sub-sequence is padded to a multiple of 32 tokens with a learned pad token, and those pad
  tokens take part in attention; only the batch padding (prompts of different lengths) is masked;
- blocks are "sandwich" normed (RMSNorm before and after attention and the SwiGLU feed-forward) and
  modulated by scale and tanh-gate only, no shift, from the timestep embedding itself (no SiLU);
- RoPE has three axes (32, 48, 48 of the 128 head channels, theta 256): prompt token j sits at
  (1 + j, 0, 0), image token (row, col) at (padded prompt length + 1, row, col), pad tokens at 0;
- the model's time runs the other way: it is given 1 - sigma, and predicts minus the velocity.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...blocks.attention import attention
from ...blocks.embeddings import timestep_sinusoid
from ...blocks.fast_math import silu_times
from ...blocks.modulation import layer_norm
from ...blocks.rope import apply_rope, normed_rope, rope_tables
from ...errors import CheckpointError

ADALN_DIM = 256  # the timestep embedding's width (min(dim, 256))
TIMESTEP_CHANNELS = 256
TIMESTEP_HIDDEN = 1024
SEQ_MULTIPLE = 32  # every sub-sequence is padded to a multiple of this many tokens
QK_NORM_EPS = 1e-5  # diffusers' Attention is built with eps=1e-5 whatever norm_eps says
FINAL_NORM_EPS = 1e-6
PATCH = "2-1"  # (patch size)-(frame patch size): the key of the text-to-image embedder and final layer


@dataclass(frozen=True)
class ZImageTransformerConfig:
    in_channels: int = 16
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    norm_eps: float = 1e-5
    qk_norm: bool = True
    cap_feat_dim: int = 2560
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    axes_dims: tuple[int, ...] = (32, 48, 48)
    patch_sizes: tuple[str, ...] = (PATCH,)

    @classmethod
    def from_dict(cls, config: dict) -> "ZImageTransformerConfig":
        if config.get("siglip_feat_dim") is not None:
            raise CheckpointError("transformer config sets siglip_feat_dim: Z-Image Omni, which quantbench does not "
                                  "support (only text-to-image Z-Image and Z-Image-Turbo)")
        patches = tuple(f"{p}-{f}" for p, f in zip(config.get("all_patch_size", (2,)),
                                                   config.get("all_f_patch_size", (1,))))
        if PATCH not in patches:
            raise CheckpointError(f"transformer config has patch sizes {list(patches)}; text-to-image needs {PATCH}")
        fields = set(cls.__dataclass_fields__) - {"patch_sizes", "axes_dims"}
        values = {k: v for k, v in config.items() if k in fields}
        cfg = cls(**values, axes_dims=tuple(config.get("axes_dims", cls.axes_dims)), patch_sizes=patches)
        if cfg.dim % cfg.n_heads or sum(cfg.axes_dims) != cfg.dim // cfg.n_heads:
            raise CheckpointError(f"transformer config: dim {cfg.dim} over {cfg.n_heads} heads must give heads of "
                                  f"sum(axes_dims) = {sum(cfg.axes_dims)} channels")
        return cfg

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    # The widths under the names the memory model reads off every family's transformer config.
    @property
    def num_attention_heads(self) -> int:
        return self.n_heads

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim

    @property
    def joint_attention_dim(self) -> int:
        return self.cap_feat_dim

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, ADALN_DIM)

    @property
    def ffn_dim(self) -> int:
        return int(self.dim / 3 * 8)  # as diffusers computes it (float division, then truncation)

    @property
    def patch_channels(self) -> int:
        """Channels of one 2x2 patch token: (row, col, channel) of the latent, channels fastest."""
        return 4 * self.in_channels


# ---------------------------------------------------------------------------------------------
# Sequence layout: padding, masks and RoPE of one batch, computed once per generation
# ---------------------------------------------------------------------------------------------

def padded(length: int) -> int:
    return length + (-length) % SEQ_MULTIPLE


@dataclass(frozen=True)
class SequenceLayout:
    """Where every token of a batch sits. Each prompt keeps its own length; the image tokens are the same
    for every item, so only prompts are batch-padded (and masked)."""

    image_tokens: int  # real image tokens (rows x cols of 2x2 patches)
    image_length: int  # ... padded to a multiple of 32
    caption_lengths: tuple[int, ...]  # real prompt tokens per item
    caption_keep: mx.array  # (B, P, 1) bool: a real prompt token (the others become the pad token)
    caption_mask: mx.array | None  # (B, 1, 1, P) keys inside each item's padded prompt; None: all are
    joint_mask: mx.array | None  # (B, 1, 1, N' + P) the same over [image, prompt]
    image_rope: tuple[mx.array, mx.array]  # cos, sin (B, N', head_dim)
    caption_rope: tuple[mx.array, mx.array]  # (B, P, head_dim)
    joint_rope: tuple[mx.array, mx.array]  # (B, N' + P, head_dim)


def image_position_ids(rows: int, cols: int, frame: int) -> np.ndarray:
    """(frame, row, col) per image token, row-major, then (0, 0, 0) for the tokens padding it to 32."""
    grid_rows, grid_cols = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    ids = np.zeros((padded(rows * cols), 3), dtype=np.int64)
    ids[: rows * cols] = np.stack([np.full(rows * cols, frame), grid_rows.ravel(), grid_cols.ravel()], axis=1)
    return ids


def caption_position_ids(length: int) -> np.ndarray:
    """(1 + j, 0, 0) for prompt token j, pad tokens included (the grid covers the padded length)."""
    ids = np.zeros((length, 3), dtype=np.int64)
    ids[:, 0] = 1 + np.arange(length)
    return ids


def _stacked_rope(ids: list[np.ndarray], cfg: ZImageTransformerConfig) -> tuple[mx.array, mx.array]:
    """(B, L, head_dim) tables: each item of the batch has its own positions. The reference builds a complex64
    table from float64 angles rounded to float32."""
    tables = [rope_tables(i, cfg.axes_dims, cfg.rope_theta, float32_angles=True) for i in ids]
    return mx.stack([c for c, _ in tables]), mx.stack([s for _, s in tables])


def _key_mask(lengths: list[int], total: int) -> mx.array | None:
    if all(length == total for length in lengths):
        return None
    keep = np.arange(total)[None, :] < np.array(lengths)[:, None]
    return mx.array(keep)[:, None, None, :]


def sequence_layout(cfg: ZImageTransformerConfig, rows: int, cols: int, caption_lengths: list[int]) -> SequenceLayout:
    n = rows * cols
    n_padded = padded(n)
    caption_padded = [padded(length) for length in caption_lengths]
    longest = max(caption_padded)
    image_ids = [image_position_ids(rows, cols, p + 1) for p in caption_padded]
    caption_ids = caption_position_ids(longest)
    keep = np.arange(longest)[None, :] < np.array(caption_lengths)[:, None]
    return SequenceLayout(
        image_tokens=n, image_length=n_padded, caption_lengths=tuple(caption_lengths),
        caption_keep=mx.array(keep)[..., None],
        caption_mask=_key_mask(caption_padded, longest),
        joint_mask=_key_mask([n_padded + p for p in caption_padded], n_padded + longest),
        image_rope=_stacked_rope(image_ids, cfg),
        caption_rope=_stacked_rope([caption_ids] * len(caption_lengths), cfg),
        joint_rope=_stacked_rope([np.concatenate([i, caption_ids]) for i in image_ids], cfg))


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = [nn.Linear(dim, dim, bias=False)]
        if qk_norm:
            self.norm_q = nn.RMSNorm(self.head_dim, eps=QK_NORM_EPS)
            self.norm_k = nn.RMSNorm(self.head_dim, eps=QK_NORM_EPS)

    def __call__(self, x: mx.array, mask: mx.array | None, rope: tuple[mx.array, mx.array]) -> mx.array:
        b, length, _ = x.shape
        q, k, v = (p(x).reshape(b, length, self.heads, self.head_dim) for p in (self.to_q, self.to_k, self.to_v))
        if "norm_q" in self:
            q, k = normed_rope([(self.norm_q, q)], *rope), normed_rope([(self.norm_k, k)], *rope)
        else:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.to_out[0](attention(q, k, v, mask))


class FeedForward(nn.Module):
    """SwiGLU with separate gate (w1) and value (w3) projections."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.w2(silu_times(self.w1(x), self.w3(x)))


class TransformerBlock(nn.Module):
    """`layers.N`, `noise_refiner.N` (modulated) and `context_refiner.N` (not modulated)."""

    def __init__(self, cfg: ZImageTransformerConfig, modulation: bool):
        super().__init__()
        dim = cfg.dim
        self.attention = Attention(dim, cfg.n_heads, cfg.qk_norm)
        self.feed_forward = FeedForward(dim, cfg.ffn_dim)
        self.attention_norm1 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        self.ffn_norm1 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        self.attention_norm2 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        self.ffn_norm2 = nn.RMSNorm(dim, eps=cfg.norm_eps)
        if modulation:
            self.adaLN_modulation = [nn.Linear(cfg.adaln_dim, 4 * dim)]  # a list so the key reads `.0.`

    def __call__(self, x: mx.array, mask: mx.array | None, rope: tuple[mx.array, mx.array],
                 adaln: mx.array | None = None) -> mx.array:
        if "adaLN_modulation" not in self:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), mask, rope))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = mx.split(self.adaLN_modulation[0](adaln)[:, None, :], 4, axis=-1)
        attended = self.attention(self.attention_norm1(x) * (1 + scale_msa), mask, rope)
        x = x + mx.tanh(gate_msa) * self.attention_norm2(attended)
        return x + mx.tanh(gate_mlp) * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp)))


class FinalLayer(nn.Module):
    """`all_final_layer.2-1`: LayerNorm (no affine) scaled by 1 + linear(silu(temb)), then the patch projection."""

    def __init__(self, cfg: ZImageTransformerConfig, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(cfg.dim, out_channels)
        self.adaLN_modulation = [nn.SiLU(), nn.Linear(cfg.adaln_dim, cfg.dim)]

    def __call__(self, x: mx.array, adaln: mx.array) -> mx.array:
        scale = 1 + self.adaLN_modulation[1](nn.silu(adaln))
        return self.linear(layer_norm(x, FINAL_NORM_EPS) * scale[:, None, :])


class TimestepEmbedder(nn.Module):
    """`t_embedder`: 256-channel sinusoid of t x t_scale -> Linear -> SiLU -> Linear."""

    def __init__(self, out: int):
        super().__init__()
        self.mlp = [nn.Linear(TIMESTEP_CHANNELS, TIMESTEP_HIDDEN), nn.SiLU(), nn.Linear(TIMESTEP_HIDDEN, out)]

    def __call__(self, t: mx.array, dtype: mx.Dtype) -> mx.array:
        """`dtype` is the activations': kept layers may be stored narrower and must not set the precision."""
        frequencies = timestep_sinusoid(t, TIMESTEP_CHANNELS).astype(dtype)
        return self.mlp[2](nn.silu(self.mlp[0](frequencies))).astype(dtype)


class PatchSizes(nn.Module):
    """`all_x_embedder` / `all_final_layer`: one layer per patch size, keyed "2-1" as in the checkpoint."""

    def __init__(self, layers: dict[str, nn.Module]):
        super().__init__()
        for key, layer in layers.items():
            self[key] = layer


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class ZImageTransformer(nn.Module):
    def __init__(self, cfg: ZImageTransformerConfig):
        super().__init__()
        self.config = cfg
        dim = cfg.dim
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim)
        self.all_x_embedder = PatchSizes({key: nn.Linear(_patch_volume(key) * cfg.in_channels, dim)
                                          for key in cfg.patch_sizes})
        self.all_final_layer = PatchSizes({key: FinalLayer(cfg, _patch_volume(key) * cfg.in_channels)
                                           for key in cfg.patch_sizes})
        self.cap_embedder = [nn.RMSNorm(cfg.cap_feat_dim, eps=cfg.norm_eps), nn.Linear(cfg.cap_feat_dim, dim)]
        self.noise_refiner = [TransformerBlock(cfg, modulation=True) for _ in range(cfg.n_refiner_layers)]
        self.context_refiner = [TransformerBlock(cfg, modulation=False) for _ in range(cfg.n_refiner_layers)]
        self.layers = [TransformerBlock(cfg, modulation=True) for _ in range(cfg.n_layers)]
        self.x_pad_token = mx.zeros((1, dim))
        self.cap_pad_token = mx.zeros((1, dim))

    @classmethod
    def from_config(cls, config: dict) -> "ZImageTransformer":
        return cls(ZImageTransformerConfig.from_dict(config))

    def layout(self, rows: int, cols: int, caption_lengths: list[int]) -> SequenceLayout:
        """Padding, masks and RoPE for a (rows x cols)-token image and prompts of these lengths."""
        return sequence_layout(self.config, rows, cols, caption_lengths)

    def __call__(self, x: mx.array, captions: mx.array, t: mx.array, layout: SequenceLayout) -> mx.array:
        """The model's output for (B, N, 4 * in_channels) patch tokens (channels fastest within a patch).

        captions: (B, L, cap_feat_dim) prompt features, item i real up to layout.caption_lengths[i];
        t: (B,) the model's time, 1 - sigma. The flow velocity is minus the output.
        """
        dtype = x.dtype
        adaln = self.t_embedder(t.astype(mx.float32) * self.config.t_scale, dtype)
        img = _pad_with(self.all_x_embedder[PATCH](x), self.x_pad_token.astype(dtype), layout.image_length)
        for block in self.noise_refiner:
            img = block(img, None, layout.image_rope, adaln)
        longest = layout.caption_keep.shape[1]
        cap = self.cap_embedder[1](self.cap_embedder[0](captions[:, :longest]))
        cap = _pad_with(cap, self.cap_pad_token.astype(dtype), longest)
        cap = mx.where(layout.caption_keep, cap, self.cap_pad_token.astype(dtype))
        for block in self.context_refiner:
            cap = block(cap, layout.caption_mask, layout.caption_rope)
        joint = mx.concatenate([img, cap], axis=1)
        for block in self.layers:
            joint = block(joint, layout.joint_mask, layout.joint_rope, adaln)
        return self.all_final_layer[PATCH](joint[:, : layout.image_tokens], adaln)


def _patch_volume(key: str) -> int:
    patch, frames = (int(v) for v in key.split("-"))
    return patch * patch * frames


def _pad_with(x: mx.array, token: mx.array, length: int) -> mx.array:
    """(B, L, dim) -> (B, length, dim), the extra positions filled with `token`."""
    extra = length - x.shape[1]
    if extra <= 0:
        return x
    return mx.concatenate([x, mx.broadcast_to(token, (x.shape[0], extra, x.shape[2]))], axis=1)
