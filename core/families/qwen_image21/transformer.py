"""QwenImage21Transformer2DModel in MLX: Qwen-Image 2.1's single-stream denoiser.

Module and parameter names follow the diffusers checkpoint keys. What sets 2.1 apart from Qwen-Image:
- one stream: the prompt's tokens and the image's latents (64 channels, not patched: one token per
  16x16 pixels) form one sequence, [text, image], through 32 identical blocks (attention + SwiGLU);
- one modulation for all blocks: Linear(silu(temb)) gives (scale, gate) for attention and for the MLP,
  with no shift; gates pass through tanh; the output norm has a scale only;
- block-causal attention: text tokens attend causally to the text before them, image tokens to every
  text token and to each other;
- causal_condition: text tokens are modulated as at t = 0, whatever the step.
The last two together make the text stream independent of the image and of the step, so its keys and
values are computed once per generation (`text_prefix`) and each step runs the image tokens only, as
diffusers' pipeline does with its KV cache.

RoPE (frame, row, column) on interleaved pairs: text tokens advance one position on all three axes;
the image's frame axis is frozen at the text length and its rows and columns are centred on zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...blocks.attention import attention
from ...blocks.embeddings import TimestepEmbedding, timestep_sinusoid
from ...blocks.fast_math import gelu_approx, silu_times
from ...blocks.modulation import gated_add, norm_modulate
from ...blocks.rope import normed_rope, rope_tables
from ...checkpoint import Rule
from ...errors import CheckpointError
from ...model_files import config_dataclass

ROPE_THETA = 10000.0
TIMESTEP_CHANNELS = 256


@dataclass(frozen=True)
class QwenImage21TransformerConfig:
    patch_size: int = 1
    in_channels: int = 64
    out_channels: int | None = 64
    num_layers: int = 32
    attention_head_dim: int = 128
    num_attention_heads: int = 32
    context_in_dim: int = 4096
    mlp_ratio: int = 3
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    eps: float = 1e-6
    causal_condition: bool = True

    @classmethod
    def from_dict(cls, config: dict) -> "QwenImage21TransformerConfig":
        cfg = config_dataclass(cls, config, "transformer/config.json", rope_axes=3)
        if cfg.patch_size != 1:
            raise CheckpointError(f"transformer config: patch_size {cfg.patch_size} is not supported (Qwen-Image 2.1 "
                                  "reads its latents unpatched, patch_size 1)")
        if not cfg.causal_condition:
            raise CheckpointError("transformer config: causal_condition false is not supported (every Qwen-Image 2.1 "
                                  "checkpoint modulates its prompt as at t = 0)")
        return cfg

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def joint_attention_dim(self) -> int:
        """The prompt features' width, by the name the other families' configs (and the memory model) use."""
        return self.context_in_dim


# ---------------------------------------------------------------------------------------------
# Timestep embedding and RoPE
# ---------------------------------------------------------------------------------------------

def timestep_embedding_input(sigma: mx.array) -> mx.array:
    """[cos, sin] of (1000 * sigma) * freqs, in float32 and in the reference's order of operations."""
    return timestep_sinusoid(sigma.astype(mx.float32) * 1000.0, TIMESTEP_CHANNELS)


class TimeTextEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_CHANNELS, dim, bias=False)

    def __call__(self, sigma: mx.array, dtype: mx.Dtype) -> mx.array:
        return self.timestep_embedder(timestep_embedding_input(sigma).astype(dtype))


def rope_for(positions: np.ndarray, axes_dims: tuple[int, ...]) -> tuple[mx.array, mx.array]:
    """cos/sin (..., head_dim) from (..., 3) positions, in float32 as the reference computes them."""
    tables = [rope_tables(p, axes_dims, ROPE_THETA, np.float32) for p in positions.reshape(-1, *positions.shape[-2:])]
    cos, sin = mx.stack([t[0] for t in tables]), mx.stack([t[1] for t in tables])
    shape = (*positions.shape[:-1], cos.shape[-1])
    return cos.reshape(shape), sin.reshape(shape)


def text_positions(length: int) -> np.ndarray:
    return np.repeat(np.arange(length, dtype=np.int64)[:, None], 3, axis=1)


def image_positions(text_length: int, height: int, width: int) -> np.ndarray:
    """(frame, row, column) per latent, row-major: the frame is the text length, rows/columns centred."""
    rows = np.arange(height) - (height - height // 2)
    cols = np.arange(width) - (width - width // 2)
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
    ids = np.full((height * width, 3), text_length, dtype=np.int64)
    ids[:, 1], ids[:, 2] = grid_rows.reshape(-1), grid_cols.reshape(-1)
    return ids


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

class ZeroCenteredRMSNorm(nn.Module):
    """RMSNorm whose stored weight is the scale minus one (`txt_in.text_norm`), computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dim,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        scale = self.weight.astype(mx.float32) + 1
        return mx.fast.rms_norm(x.astype(mx.float32), scale, self.eps).astype(x.dtype)


class TextProjection(nn.Module):
    """`txt_in`: norm, Linear, GELU (tanh), Linear: prompt features into the model's width."""

    def __init__(self, context_dim: int, dim: int, eps: float):
        super().__init__()
        self.text_norm = ZeroCenteredRMSNorm(context_dim, eps)
        self.in_layer = nn.Linear(context_dim, dim, bias=False)
        self.out_layer = nn.Linear(dim, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.out_layer(gelu_approx(self.in_layer(self.text_norm(x))))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden, bias=False)
        self.gate_layer = nn.Linear(dim, hidden, bias=False)
        self.out = nn.Linear(hidden, dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.out(silu_times(self.gate_layer(x), self.proj(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        self.head_dim = head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.norm_q = nn.RMSNorm(head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(head_dim, eps=eps)
        self.to_out = [nn.Linear(inner, dim, bias=False)]

    def _heads(self, x: mx.array) -> mx.array:
        return x.reshape(*x.shape[:-1], -1, self.head_dim)

    def keys_values(self, x: mx.array, rope) -> tuple[mx.array, mx.array]:
        return normed_rope([(self.norm_k, self._heads(self.to_k(x)))], *rope), self._heads(self.to_v(x))

    def __call__(self, x: mx.array, rope, prefix: tuple[mx.array, mx.array] | None, mask,
                 own: tuple[mx.array, mx.array] | None = None) -> mx.array:
        """Queries from x attend to `prefix` keys/values (when given), then to x's own (`own`: keys_values(x, rope),
        computed already); (B, L, H, D) each."""
        q = normed_rope([(self.norm_q, self._heads(self.to_q(x)))], *rope)
        k, v = own if own is not None else self.keys_values(x, rope)
        if prefix is not None:
            k, v = mx.concatenate([prefix[0], k], axis=1), mx.concatenate([prefix[1], v], axis=1)
        return self.to_out[0](attention(q, k, v, mask))


class TransformerBlock(nn.Module):
    """`transformer_blocks.N`: norm, (1 + scale), attention, tanh(gate); the same around the SwiGLU."""

    def __init__(self, cfg: QwenImage21TransformerConfig):
        super().__init__()
        self.eps = cfg.eps
        self.attn = Attention(cfg.inner_dim, cfg.num_attention_heads, cfg.attention_head_dim, cfg.eps)
        self.img_mlp = SwiGLU(cfg.inner_dim, cfg.inner_dim * cfg.mlp_ratio)

    def attention_input(self, x: mx.array, mod: tuple[mx.array, ...]) -> mx.array:
        return norm_modulate(x, mod[0], mod[1], self.eps)

    def __call__(self, x: mx.array, mod: tuple[mx.array, ...], rope, prefix=None, mask=None, own=None) -> mx.array:
        """mod: (shift, scale, gate, scale2, gate2), each (rows, 1, dim), the shift zero (unshifted). own: x's
        (attention input, keys, values), computed already (the text prefix keeps the keys and values)."""
        normed = own[0] if own is not None else self.attention_input(x, mod)
        x = gated_add(x, mx.tanh(mod[2]), self.attn(normed, rope, prefix, mask, None if own is None else own[1:]))
        return gated_add(x, mx.tanh(mod[4]), self.img_mlp(norm_modulate(x, mod[0], mod[3], self.eps)))


def unshifted(modulation: mx.array, parts: int) -> tuple[mx.array, ...]:
    """A zero shift, then the `parts` (rows, 1, dim) pieces of a (rows, parts * dim) modulation: LayerNorm times
    (1 + scale) is blocks.modulation.norm_modulate with a zero shift (adding zero changes no number). All are views
    of one array, so the shift and each scale have the same layout, which the CPU's norm_modulate kernel needs."""
    joined = mx.concatenate([mx.zeros_like(modulation[:, : modulation.shape[-1] // parts]), modulation], axis=-1)
    return tuple(mx.split(joined[:, None, :], parts + 1, axis=-1))


class AdaNormOut(nn.Module):
    """`norm_out`: LayerNorm times (1 + linear(silu(temb))); scale only, no shift."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(dim, dim, bias=False)

    def __call__(self, x: mx.array, temb: mx.array) -> mx.array:
        return norm_modulate(x, *unshifted(self.linear(nn.silu(temb)), 1), self.eps)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

@dataclass
class TextPrefix:
    """Every block's keys and values for the prompt tokens (B, L, H, D), and which are real (None: all)."""

    keys: list[mx.array]
    values: list[mx.array]
    lengths: list[int]
    mask: mx.array | None


class QwenImage21Transformer(nn.Module):
    def __init__(self, cfg: QwenImage21TransformerConfig):
        super().__init__()
        self.config = cfg
        dim = cfg.inner_dim
        self.time_text_embed = TimeTextEmbed(dim)
        self.txt_in = TextProjection(cfg.context_in_dim, dim, cfg.eps)
        self.img_in = nn.Linear(cfg.in_channels, dim, bias=False)
        self.modulation = [nn.SiLU(), nn.Linear(dim, 4 * dim, bias=False)]
        self.transformer_blocks = [TransformerBlock(cfg) for _ in range(cfg.num_layers)]
        self.norm_out = AdaNormOut(dim, cfg.eps)
        self.proj_out = nn.Linear(dim, cfg.out_channels or cfg.in_channels, bias=False)

    @classmethod
    def from_config(cls, config: dict) -> "QwenImage21Transformer":
        return cls(QwenImage21TransformerConfig.from_dict(config))

    def _modulation(self, temb: mx.array) -> tuple[mx.array, ...]:
        """(shift, scale, gate, scale2, gate2), each (rows, 1, dim); see unshifted."""
        return unshifted(self.modulation[1](self.modulation[0](temb)), 4)

    def text_prefix(self, prompts: list[mx.array]) -> TextPrefix:
        """Run each prompt's (L_i, context_in_dim) features through every block, as at t = 0, and keep the
        keys and values the image tokens attend to; prompts of different lengths are padded at the end."""
        longest = max(p.shape[0] for p in prompts)
        dtype = prompts[0].dtype
        mod = self._modulation(self.time_text_embed(mx.zeros((1,)), dtype))
        causal = mx.triu(mx.full((longest, longest), -mx.inf, dtype=dtype), k=1)
        keys: list[list[mx.array]] = [[] for _ in self.transformer_blocks]
        values: list[list[mx.array]] = [[] for _ in self.transformer_blocks]
        for features in prompts:
            length = features.shape[0]
            x = self.txt_in(features[None])
            rope = rope_for(text_positions(length), self.config.axes_dims_rope)
            mask = causal[:length, :length]
            for i, block in enumerate(self.transformer_blocks):
                normed = block.attention_input(x, mod)
                k, v = block.attn.keys_values(normed, rope)
                keys[i].append(_padded(k, longest))
                values[i].append(_padded(v, longest))
                if i + 1 < len(self.transformer_blocks):  # the block reuses them: no second copy while it runs
                    x = block(x, mod, rope, mask=mask, own=(normed, k, v))
        lengths = [p.shape[0] for p in prompts]
        return TextPrefix([_joined(k) for k in keys], [_joined(v) for v in values], lengths,
                          None if len(set(lengths)) == 1 else _padding_mask(lengths, longest))

    def image_rope(self, prefix: TextPrefix, height: int, width: int) -> tuple[mx.array, mx.array]:
        """RoPE tables (B, h*w, head_dim) of the image tokens that follow each prompt."""
        positions = np.stack([image_positions(length, height, width) for length in prefix.lengths])
        return rope_for(positions, self.config.axes_dims_rope)

    def __call__(self, x: mx.array, sigma: mx.array, prefix: TextPrefix, rope: tuple[mx.array, mx.array]) -> mx.array:
        """Predict the flow velocity of the image tokens.

        x: (B, N, in_channels) latents, one token per latent pixel, row-major; sigma: (B,) noise levels;
        prefix: the prompts' keys and values (`text_prefix`), one per batch row; rope: `image_rope`.
        """
        temb = self.time_text_embed(sigma, x.dtype)
        mod = self._modulation(temb)
        mask = None
        if prefix.mask is not None:
            image = mx.ones((x.shape[0], x.shape[1]), dtype=mx.bool_)
            mask = mx.concatenate([prefix.mask, image], axis=1)[:, None, None, :]
        h = self.img_in(x)
        for block, k, v in zip(self.transformer_blocks, prefix.keys, prefix.values):
            h = block(h, mod, rope, (k, v), mask)
        return self.proj_out(self.norm_out(h, temb))


def _padded(x: mx.array, longest: int) -> mx.array:
    """x (1, L, H, D) padded with zeros to `longest` positions; x itself when it is that long (no copy: the cache is
    2 x layers x tokens x inner width, held through the denoising, and a copy of it is as much again)."""
    return x if x.shape[1] == longest else mx.pad(x, [(0, 0), (0, longest - x.shape[1]), (0, 0), (0, 0)])


def _joined(rows: list[mx.array]) -> mx.array:
    return rows[0] if len(rows) == 1 else mx.concatenate(rows)


def _padding_mask(lengths: list[int], longest: int) -> mx.array:
    return mx.array([[i < length for i in range(longest)] for length in lengths])


# Checkpoint keys are the module's own names (ComfyUI's fused layout is mapped in components.py).
TRANSFORMER_RULES = [Rule(r"(.*)", r"\1")]
