"""Qwen2.5-VL's language model in MLX, run as Qwen-Image's prompt encoder.

Only the decoder stack is built: text-to-image prompts have no image tokens, so the vision tower's
weights are skipped. Its decoder layers are Qwen3's (core/flux2/text_encoder.py) with q/k/v biases
and no query/key norms. Qwen2.5-VL rotates queries and keys with multimodal RoPE: three position
streams (time, height, width), each driving its own section of the frequencies. For text every
token has the same position on all three streams, so the sections recombine into ordinary RoPE
over the token index (non-interleaved halves, as Qwen2). Without image inputs transformers gives
the tokens positions 0..L-1 whatever the padding, and so does this encoder.

The pipeline reads the last hidden state (after the final norm); the LM head is skipped.
Module and parameter names are the language model's own, without `model.` (or
`model.language_model.`, the layout some transformers versions write).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..checkpoint import Component, LoadReport, Rule, load_weights, open_component
from ..errors import CheckpointError
from ..flux2.text_encoder import DecoderLayer, Qwen3Config, attention_bias


@dataclass(frozen=True)
class QwenTextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1_000_000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def decoder_layer(self) -> Qwen3Config:
        """Qwen2's decoder layer is Qwen3's with biases on q, k and v and no per-head query/key norms."""
        return Qwen3Config(self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers,
                           self.num_attention_heads, self.num_key_value_heads, self.head_dim, self.rms_norm_eps,
                           self.rope_theta, attention_bias=True, qk_norm=False, o_proj_bias=False)

    @classmethod
    def from_dict(cls, config: dict) -> "QwenTextConfig":
        """Read a Qwen2.5-VL config.json: transformers 5 nests the language model under `text_config`,
        older files keep it flat (the released checkpoint has both; the nested values win)."""
        text = {**config, **(config.get("text_config") or {})}
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        absent = [k for k in required if k not in text]
        if absent:
            raise CheckpointError(f"text encoder config.json lacks {', '.join(absent)}")
        if text.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"text encoder hidden_act {text['hidden_act']!r} is not supported (only silu)")
        if text.get("use_sliding_window"):
            raise CheckpointError("text encoder uses sliding-window attention, which is not supported")
        heads = text["num_attention_heads"]
        return cls(
            vocab_size=text["vocab_size"],
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=text.get("num_key_value_heads") or heads,
            rms_norm_eps=text.get("rms_norm_eps", 1e-5),
            rope_theta=_rope_theta(text, config),
        )


def _rope_theta(text: dict, config: dict) -> float:
    rope = text.get("rope_parameters") or text.get("rope_scaling") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise CheckpointError(f"text encoder rope_type {rope_type!r} is not supported (only default/mrope)")
    return float(rope.get("rope_theta") or text.get("rope_theta") or config.get("rope_theta") or 1_000_000.0)


class QwenTextEncoder(nn.Module):
    """Token embedding, every decoder layer and the final norm of Qwen2.5-VL's language model."""

    def __init__(self, cfg: QwenTextConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        layer = cfg.decoder_layer()
        self.layers = [DecoderLayer(layer) for _ in range(cfg.num_hidden_layers)]
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    @classmethod
    def from_config(cls, config: dict) -> "QwenTextEncoder":
        return cls(QwenTextConfig.from_dict(config))

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        """The last hidden state (B, L, hidden): causal attention, padded keys hidden."""
        h = self.embed_tokens(input_ids)
        mask = attention_bias(attention_mask, h.dtype)
        for layer in self.layers:
            h = layer(h, mask)
        return self.norm(h)


def drop_template(hidden: mx.array, attention_mask: np.ndarray, drop: int) -> list[mx.array]:
    """Each prompt's real tokens (mask nonzero), less the first `drop`: the template's system turn."""
    return [row[mx.array(np.flatnonzero(keep))][drop:] for row, keep in zip(hidden, attention_mask)]


_VISION = "vision tower: text-to-image prompts have no image tokens"

# transformers 5 and the released checkpoints write `model.layers.*` and `visual.*`; transformers 4.5x
# wrote `model.language_model.*` and `model.visual.*`. Both load.
TEXT_ENCODER_RULES = [
    Rule(r"(?:model\.)?visual\..+", None, reason=_VISION),
    Rule(r"lm_head\.weight", None, reason="LM head: not used for encoding"),
    Rule(r"model\.language_model\.(.+)", r"\1"),
    Rule(r"model\.(.+)", r"\1"),
]


def load_text_encoder(folder: Path | str, dtype: mx.Dtype | None = mx.float32,
                      prepare: Callable[[nn.Module, Component], object] | None = None,
                      ) -> tuple[QwenTextEncoder, LoadReport]:
    """Build and load the language model in `folder`; `prepare(module, component)` runs before loading
    (e.g. to give a saved quantized encoder its quantized layers)."""
    component = open_component(folder)
    try:
        module = QwenTextEncoder.from_config(component.config)
    except CheckpointError as exc:
        raise CheckpointError(f"{component.folder}: {exc}") from None
    if prepare is not None:
        prepare(module, component)
    report = load_weights(module, component, TEXT_ENCODER_RULES, "text_encoder", dtype=dtype)
    return module, report
