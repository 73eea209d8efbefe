"""The T5 encoder (T5-v1.1-XXL in FLUX.1) in MLX: token ids -> last hidden state.

FLUX.1 runs it without an attention mask (padding tokens are attended to, as in the reference).
T5 attention is unscaled and adds a learned relative-position bias, computed by the first block
and shared by all. Module and parameter names equal transformers' `T5EncoderModel` keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...checkpoint import Component, LoadReport, Rule
from ...component_loading import build_and_fill
from ...errors import CheckpointError

ACTIVATIONS = {"gelu_new": nn.gelu_approx, "gelu_pytorch_tanh": nn.gelu_approx, "gelu": nn.gelu, "relu": nn.relu,
               "silu": nn.silu}


@dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    activation: str = "gelu_new"
    gated: bool = True

    @classmethod
    def from_dict(cls, config: dict) -> "T5Config":
        required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
        absent = [k for k in required if k not in config]
        if absent:
            raise CheckpointError(f"T5 config.json lacks {', '.join(absent)}")
        # transformers derives the activation from feed_forward_proj ("gated-gelu" means the tanh GELU).
        proj = config.get("feed_forward_proj", "relu")
        gated = proj.startswith("gated-")
        activation = "gelu_new" if proj == "gated-gelu" else config.get("dense_act_fn", proj.split("-")[-1])
        if activation not in ACTIVATIONS:
            raise CheckpointError(f"T5 feed_forward_proj {proj!r} is not supported")
        fields = set(cls.__dataclass_fields__) - {"activation", "gated"}
        values = {k: v for k, v in config.items() if k in fields}
        return cls(**values, activation=activation, gated=gated)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """(length, length) bucket of key position minus query position, bidirectional, as T5 bins them.

    Half the buckets for each direction; within one, exact distances up to half of it, then
    logarithmic bins up to max_distance. float32, as the reference computes the logarithm.
    """
    relative = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    # Distances below max_exact are not read from `scaled`; clamping them keeps log() finite.
    far = np.maximum(distance, max_exact).astype(np.float32)
    scaled = np.log(far / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = np.minimum(max_exact + (scaled * np.float32(half - max_exact)).astype(np.int64), half - 1)
    return buckets + np.where(distance < max_exact, distance, large)


class Attention(nn.Module):
    def __init__(self, cfg: T5Config, has_relative_bias: bool):
        super().__init__()
        self.cfg = cfg
        inner = cfg.num_heads * cfg.d_kv
        self.q, self.k, self.v = (nn.Linear(cfg.d_model, inner, bias=False) for _ in range(3))
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        if has_relative_bias:
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def position_bias(self, length: int) -> mx.array:
        """(1, heads, length, length) additive attention bias."""
        buckets = relative_position_buckets(length, self.cfg.relative_attention_num_buckets,
                                            self.cfg.relative_attention_max_distance)
        return self.relative_attention_bias(mx.array(buckets)).transpose(2, 0, 1)[None]

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        b, length, _ = x.shape
        q, k, v = (p(x).reshape(b, length, self.cfg.num_heads, -1).transpose(0, 2, 1, 3) for p in (self.q, self.k, self.v))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=bias.astype(q.dtype))
        return self.o(out.transpose(0, 2, 1, 3).reshape(b, length, -1))


class SelfAttentionLayer(nn.Module):
    def __init__(self, cfg: T5Config, has_relative_bias: bool):
        super().__init__()
        self.SelfAttention = Attention(cfg, has_relative_bias)
        self.layer_norm = nn.RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class DenseReluDense(nn.Module):
    """The feed-forward: gated (wi_0 activated, times wi_1) in T5 v1.1, plain (wi) in the original T5."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.activation = ACTIVATIONS[cfg.activation]
        if cfg.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        if "wi" in self:
            return self.wo(self.activation(self.wi(x)))
        return self.wo(self.activation(self.wi_0(x)) * self.wi_1(x))


class FeedForwardLayer(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.DenseReluDense = DenseReluDense(cfg)
        self.layer_norm = nn.RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.DenseReluDense(self.layer_norm(x))


class Block(nn.Module):
    def __init__(self, cfg: T5Config, has_relative_bias: bool):
        super().__init__()
        self.layer = [SelfAttentionLayer(cfg, has_relative_bias), FeedForwardLayer(cfg)]

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        return self.layer[1](self.layer[0](x, bias))


class Stack(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.block = [Block(cfg, has_relative_bias=i == 0) for i in range(cfg.num_layers)]
        self.final_layer_norm = nn.RMSNorm(cfg.d_model, eps=cfg.layer_norm_epsilon)


class T5Encoder(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg)

    @classmethod
    def from_config(cls, config: dict) -> "T5Encoder":
        return cls(T5Config.from_dict(config))

    def __call__(self, input_ids: np.ndarray) -> mx.array:
        """(B, L) token ids -> (B, L, d_model) last hidden state (no attention mask, as FLUX.1 runs it)."""
        x = self.shared(mx.array(input_ids))
        blocks = self.encoder.block
        bias = blocks[0].layer[0].SelfAttention.position_bias(x.shape[1])
        for block in blocks:
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)


T5_RULES = [
    # transformers ties the encoder's embedding to `shared`; some files store the copy too.
    Rule(r"encoder\.embed_tokens\.weight", r"shared.weight"),
    Rule(r"(?:decoder|lm_head)\..*", None, reason="decoder: not used for encoding"),
    Rule(r"(.*)", r"\1"),
]


def load_t5(folder: Path | str, dtype: mx.Dtype | None = mx.float32,
            prepare: Callable[[nn.Module, Component], object] | None = None) -> tuple[T5Encoder, LoadReport]:
    """Build and load the T5 encoder in `folder`; `prepare(module, component)` runs before loading."""
    return build_and_fill(folder, T5Encoder.from_config, T5_RULES, "text_encoder_2", dtype, prepare)
