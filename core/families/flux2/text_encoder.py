"""The Qwen3 decoder stack in MLX, run as FLUX.2 Klein's prompt encoder.

Klein conditions on hidden states of intermediate layers (9, 18 and 27 of Qwen3's 36), concatenated
per token, so only the decoder layers up to the last one read are built, loaded and run; the final
norm and the LM head are skipped. Indexing follows transformers' `output_hidden_states`: entry 0 is
the token embedding, entry i the output of decoder layer i-1, and the last entry (index
`num_hidden_layers`) has the final norm applied.

Module and parameter names are the checkpoint keys without the leading `model.`. FLUX.2 [dev]'s
Mistral decoder is this stack without the per-head query/key norms (see mistral_text_encoder.py), and
Qwen-Image's Qwen2.5-VL language model is its layers with q/k/v biases (core/qwen_image/text_encoder.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..checkpoint import Component, LoadReport, Rule, load_weights, open_component
from ..errors import CheckpointError

# The hidden states FLUX.2 Klein's pipeline stacks.
KLEIN_HIDDEN_STATE_LAYERS = (9, 18, 27)
UNUSED_HEAD = "final norm and LM head: not used for encoding"


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    attention_bias: bool = False
    qk_norm: bool = True  # Qwen3 normalizes queries and keys per head; Mistral's decoder is the same without
    o_proj_bias: bool | None = None  # None: as attention_bias (Qwen3); Qwen2 has biases on q, k and v only

    @classmethod
    def from_dict(cls, config: dict) -> "Qwen3Config":
        """Read a transformers `Qwen3Config` JSON; raise CheckpointError for variants not implemented."""
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        absent = [k for k in required if k not in config]
        if absent:
            raise CheckpointError(f"text encoder config.json lacks {', '.join(absent)}")
        if config.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"text encoder hidden_act {config['hidden_act']!r} is not supported (only silu)")
        if config.get("use_sliding_window"):
            raise CheckpointError("text encoder uses sliding-window attention, which is not supported")
        heads = config["num_attention_heads"]
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=_rope_theta(config),
            attention_bias=bool(config.get("attention_bias", False)),
        )


def _rope_theta(config: dict) -> float:
    # transformers 5 writes `rope_parameters`; older configs have `rope_theta` and `rope_scaling`.
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"text encoder rope_type {rope_type!r} is not supported (only default RoPE)")
    return float(rope.get("rope_theta", config.get("rope_theta", 1_000_000.0)))


class Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim ** -0.5
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=cfg.attention_bias)
        o_bias = cfg.attention_bias if cfg.o_proj_bias is None else cfg.o_proj_bias
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=o_bias)
        if cfg.qk_norm:  # per head, before RoPE
            self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.rms_norm_eps)
        self.rope = nn.RoPE(self.head_dim, traditional=False, base=cfg.rope_theta)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        B, L, _ = x.shape
        q = self.q_proj(x).reshape(B, L, self.num_heads, -1)
        k = self.k_proj(x).reshape(B, L, self.num_kv_heads, -1)
        if "q_norm" in self:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.num_kv_heads, -1).transpose(0, 2, 1, 3)
        q, k = self.rope(q), self.rope(k)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = x + self.self_attn(self.input_layernorm(x), mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_bias(attention_mask: mx.array, dtype: mx.Dtype) -> mx.array:
    """Additive (B, 1, L, L) mask: causal, and padded keys hidden, as transformers' eager mask.

    Masked scores get the dtype's most negative finite value rather than -inf, like transformers:
    a query row with every key masked (a left-padded position) then softmaxes to a uniform
    average instead of NaN. With right padding no row is fully masked, since each padded query
    still sees the real tokens before it.
    """
    L = attention_mask.shape[1]
    positions = mx.arange(L)
    causal = positions[:, None] >= positions[None, :]
    keep = causal[None] & (attention_mask[:, None, :] > 0)
    return mx.where(keep, mx.array(0, dtype), mx.array(mx.finfo(dtype).min, dtype))[:, None]


class Qwen3TextEncoder(nn.Module):
    """Token embedding and the first `num_layers` Qwen3 decoder layers (plus the final norm if all are built)."""

    def __init__(self, cfg: Qwen3Config, num_layers: int | None = None):
        super().__init__()
        num_layers = cfg.num_hidden_layers if num_layers is None else num_layers
        if not 0 <= num_layers <= cfg.num_hidden_layers:
            raise ValueError(f"num_layers must be in [0, {cfg.num_hidden_layers}], got {num_layers}")
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [DecoderLayer(cfg) for _ in range(num_layers)]
        # transformers reports the last hidden state after the final norm.
        if num_layers == cfg.num_hidden_layers:
            self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    @classmethod
    def from_config(cls, config: dict, num_layers: int | None = None) -> "Qwen3TextEncoder":
        return cls(Qwen3Config.from_dict(config), num_layers)

    def hidden_states(self, input_ids: mx.array, attention_mask: mx.array, layers: tuple[int, ...]) -> mx.array:
        """Hidden states `layers` (transformers' indexing) concatenated per token: (B, L, len(layers) * hidden)."""
        if not layers:
            raise ValueError("layers must name at least one hidden state")
        wanted = [resolve_layer(k, self.config.num_hidden_layers) for k in layers]
        last = max(wanted)
        if last > len(self.layers):
            raise ValueError(f"hidden state {last} needs {last} layers, this encoder was built with {len(self.layers)}")
        h = self.embed_tokens(input_ids)
        mask = attention_bias(attention_mask, h.dtype)
        states = {0: h}
        for index, layer in enumerate(self.layers[:last], start=1):
            h = layer(h, mask)
            if index in wanted:
                states[index] = h
        if last == self.config.num_hidden_layers:
            states[last] = self.norm(states[last])
        # Equal to the pipeline's stack on dim 1, permute and reshape: layer features side by side per token.
        return mx.concatenate([states[k] for k in wanted], axis=-1)


def resolve_layer(index: int, num_hidden_layers: int) -> int:
    """Map a hidden-state index (negative ones count from the end, as in Python) to 0..num_hidden_layers."""
    count = num_hidden_layers + 1
    if not -count <= index < count:
        raise CheckpointError(f"the text encoder has {num_hidden_layers} layers, so it has no hidden state {index}")
    return index % count


def text_encoder_rules(num_layers: int, final_norm: bool = False, prefix: str = r"model\.") -> list[Rule]:
    """Checkpoint-key rules for an encoder built with `num_layers` layers (and the final norm if asked).

    `prefix` is the regex before the decoder's own names (`model.` in a causal-LM checkpoint).
    """
    rules = []
    if num_layers > 0:
        kept = "|".join(str(i) for i in range(num_layers))
        rules.append(Rule(rf"{prefix}layers\.({kept})\.(.+)", r"layers.\1.\2"))
    rules += [
        Rule(rf"{prefix}layers\.\d+\..+", None, reason="layers after the last one the pipeline reads"),
        Rule(rf"{prefix}norm\.weight", "norm.weight" if final_norm else None, reason=UNUSED_HEAD),
        Rule(r"lm_head\.weight", None, reason=UNUSED_HEAD),
        Rule(rf"{prefix}(.+)", r"\1"),
    ]
    return rules


# Rules for Klein's default layers of a Qwen3 with more than 27 layers (4B and 8B have 36).
TEXT_ENCODER_RULES = text_encoder_rules(max(KLEIN_HIDDEN_STATE_LAYERS))


def load_text_encoder(folder: Path | str, layers: tuple[int, ...] = KLEIN_HIDDEN_STATE_LAYERS,
                      dtype: mx.Dtype | None = mx.float32,
                      prepare: Callable[[nn.Module, Component], object] | None = None,
                      ) -> tuple[Qwen3TextEncoder, LoadReport]:
    """Build and load just enough of the Qwen3 in `folder` to produce hidden states `layers`.

    `prepare(module, component)` runs between building and loading (e.g. to give a saved quantized
    encoder its quantized layers).
    """
    component = open_component(folder)
    try:
        cfg = Qwen3Config.from_dict(component.config)
        num_layers = max(resolve_layer(k, cfg.num_hidden_layers) for k in layers)
    except CheckpointError as exc:
        raise CheckpointError(f"{component.folder}: {exc}") from None
    module = Qwen3TextEncoder(cfg, num_layers)
    if prepare is not None:
        prepare(module, component)
    rules = text_encoder_rules(num_layers, final_norm=num_layers == cfg.num_hidden_layers)
    report = load_weights(module, component, rules, "text_encoder", dtype=dtype)
    return module, report
