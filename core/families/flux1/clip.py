"""The CLIP text encoder (CLIP-L in FLUX.1) in MLX, run for its pooled output only.

FLUX.1 conditions its timestep embedding on CLIP's pooled vector: the final-layer-normed hidden
state at the end-of-text token. Module and parameter names equal transformers 5's `CLIPTextModel`
keys; older checkpoints (the FLUX.1 repositories) prefix them with `text_model.`, which the rules strip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...checkpoint import Component, LoadReport, Rule
from ...component_loading import build_and_fill
from ...errors import CheckpointError

ACTIVATIONS = {"quick_gelu": nn.gelu_fast_approx, "gelu": nn.gelu, "gelu_new": nn.gelu_approx,
               "gelu_pytorch_tanh": nn.gelu_approx}
# transformers keeps this id for configs written before it pooled at the configured end token:
# such models pool at the largest token id, which CLIP's vocabulary gives to the end token.
LEGACY_EOS_TOKEN_ID = 2


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = LEGACY_EOS_TOKEN_ID

    @classmethod
    def from_dict(cls, config: dict) -> "CLIPTextConfig":
        config = config.get("text_config", config)  # a full CLIPConfig carries the text part nested
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        absent = [k for k in required if k not in config]
        if absent:
            raise CheckpointError(f"CLIP config.json lacks {', '.join(absent)}")
        if config.get("hidden_act", "quick_gelu") not in ACTIVATIONS:
            raise CheckpointError(f"CLIP hidden_act {config['hidden_act']!r} is not supported")
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in config.items() if k in fields and v is not None})


class Attention(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def __call__(self, x: mx.array) -> mx.array:
        b, length, dim = x.shape
        q, k, v = (p(x).reshape(b, length, self.heads, -1).transpose(0, 2, 1, 3)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=(dim // self.heads) ** -0.5, mask="causal")
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, length, dim))


class MLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.activation = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(self.activation(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def __call__(self, input_ids: mx.array) -> mx.array:
        return self.token_embedding(input_ids) + self.position_embedding(mx.arange(input_ids.shape[1]))


class Encoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = [EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)]


class CLIPTextEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    @classmethod
    def from_config(cls, config: dict) -> "CLIPTextEncoder":
        return cls(CLIPTextConfig.from_dict(config))

    def pooled(self, input_ids: np.ndarray) -> mx.array:
        """(B, L) token ids -> (B, hidden) pooled output, as transformers' `pooler_output`."""
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"CLIP takes at most {self.config.max_position_embeddings} tokens, got {input_ids.shape[1]}")
        x = self.embeddings(mx.array(input_ids))
        for layer in self.encoder.layers:
            x = layer(x)
        positions = pooled_positions(input_ids, self.config.eos_token_id)
        return self.final_layer_norm(x[mx.arange(x.shape[0]), mx.array(positions)])


def pooled_positions(input_ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """Where each sequence is pooled: its first end token (or, for legacy configs, its largest id)."""
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return input_ids.argmax(axis=-1)
    return (input_ids == eos_token_id).argmax(axis=-1)


CLIP_RULES = [
    Rule(r"(?:text_model\.)?embeddings\.position_ids", None, reason="position ids buffer"),
    Rule(r"text_projection\.weight", None, reason="text projection: FLUX.1 uses the unprojected pooled output"),
    Rule(r"(?:text_model\.)?(.+)", r"\1"),
]


def load_clip(folder: Path | str, dtype: mx.Dtype | None = mx.float32,
              prepare: Callable[[nn.Module, Component], object] | None = None) -> tuple[CLIPTextEncoder, LoadReport]:
    """Build and load the CLIP text model in `folder`; `prepare(module, component)` runs before loading."""
    return build_and_fill(folder, CLIPTextEncoder.from_config, CLIP_RULES, "text_encoder", dtype,
                          prepare)
