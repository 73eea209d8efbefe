"""The decoder-only language model in MLX, run as a prompt encoder: Qwen3 (FLUX.2 Klein), Mistral (FLUX.2
[dev]) and Qwen2.5-VL's language model (Qwen-Image) are one stack with a few switches.

Each layer is pre-norm attention (grouped-query, RoPE over halves, optional per-head query/key RMS norms,
optional q/k/v biases) and a SwiGLU MLP. Hidden states are indexed as transformers' `output_hidden_states`:
entry 0 is the token embedding, entry i the output of decoder layer i-1, and the last entry (index
`num_hidden_layers`) has the final norm applied. Only the layers up to the last hidden state a pipeline
reads are built, loaded and run; the LM head never is.

Module and parameter names are the checkpoint keys without the leading `model.`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..checkpoint import Rule
from ..errors import CheckpointError

UNUSED_HEAD = "final norm and LM head: not used for encoding"


@dataclass(frozen=True)
class DecoderLMConfig:
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
    qk_norm: bool = True  # Qwen3 normalizes queries and keys per head; Mistral and Qwen2 do not
    o_proj_bias: bool | None = None  # None: as attention_bias (Qwen3); Qwen2 has biases on q, k and v only

    @classmethod
    def from_dict(cls, config: dict, *, rms_norm_eps: float = 1e-6, rope_types: tuple[str, ...] = ("default",),
                  **architecture) -> "DecoderLMConfig":
        """Read a transformers config.json: flat, or with the language model under `text_config` (whose values
        win). `architecture` fixes what the model family decides (qk_norm, attention_bias, o_proj_bias);
        `rms_norm_eps` is the default when the file has none. CheckpointError for variants not implemented."""
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
        values = dict(
            vocab_size=text["vocab_size"],
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            rms_norm_eps=text.get("rms_norm_eps", rms_norm_eps),
            rope_theta=_rope_theta(text, config, rope_types),
            attention_bias=bool(text.get("attention_bias", False)),
        )
        return cls(**{**values, **architecture})


def _rope_theta(text: dict, config: dict, rope_types: tuple[str, ...]) -> float:
    # transformers 5 writes `rope_parameters`; older configs have `rope_theta` and `rope_scaling`.
    rope = text.get("rope_parameters") or text.get("rope_scaling") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in rope_types:
        raise CheckpointError(f"text encoder rope_type {rope_type!r} is not supported (only {'/'.join(rope_types)})")
    return float(rope.get("rope_theta") or text.get("rope_theta") or config.get("rope_theta") or 1_000_000.0)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderLMConfig):
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
    def __init__(self, cfg: DecoderLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderLMConfig):
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


class DecoderLM(nn.Module):
    """Token embedding and the first `num_layers` decoder layers (plus the final norm if all are built and
    `final_norm`: Qwen-Image 2.1 reads the last layer's output before that norm)."""

    def __init__(self, cfg: DecoderLMConfig, num_layers: int | None = None, final_norm: bool = True):
        super().__init__()
        num_layers = cfg.num_hidden_layers if num_layers is None else num_layers
        if not 0 <= num_layers <= cfg.num_hidden_layers:
            raise ValueError(f"num_layers must be in [0, {cfg.num_hidden_layers}], got {num_layers}")
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [DecoderLayer(cfg) for _ in range(num_layers)]
        # transformers reports the last hidden state after the final norm.
        if num_layers == cfg.num_hidden_layers and final_norm:
            self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

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
        if last == self.config.num_hidden_layers and "norm" in self:
            states[last] = self.norm(states[last])
        # Equal to the pipeline's stack on dim 1, permute and reshape: layer features side by side per token.
        return mx.concatenate([states[k] for k in wanted], axis=-1)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        """The last hidden state (B, L, hidden), after the final norm when the model has one: causal attention,
        padded keys hidden."""
        h = self.embed_tokens(input_ids)
        mask = attention_bias(attention_mask, h.dtype)
        for layer in self.layers:
            h = layer(h, mask)
        return self.norm(h) if "norm" in self else h


def resolve_layer(index: int, num_hidden_layers: int) -> int:
    """Map a hidden-state index (negative ones count from the end, as in Python) to 0..num_hidden_layers."""
    count = num_hidden_layers + 1
    if not -count <= index < count:
        raise CheckpointError(f"the text encoder has {num_hidden_layers} layers, so it has no hidden state {index}")
    return index % count


def layers_needed(cfg: DecoderLMConfig, hidden_states: tuple[int, ...] | None) -> int:
    """How many decoder layers produce `hidden_states` (all of them when None)."""
    if hidden_states is None:
        return cfg.num_hidden_layers
    return max(resolve_layer(k, cfg.num_hidden_layers) for k in hidden_states)


def decoder_rules(num_layers: int, final_norm: bool = False, prefix: str = r"model\.") -> list[Rule]:
    """Checkpoint-key rules for a decoder built with `num_layers` layers (and the final norm if asked).

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


def decoder_lm_builder(read_config: Callable[[dict], DecoderLMConfig],
                       final_norm: bool = True) -> Callable[[dict, tuple | None], DecoderLM]:
    """build(config.json, hidden_states) for a family's encoder: its config reading, then just enough layers
    for the hidden states read (None: all of them, and the final norm unless `final_norm` is False)."""
    def build(config: dict, hidden_states: tuple[int, ...] | None) -> DecoderLM:
        cfg = read_config(config)
        return DecoderLM(cfg, layers_needed(cfg, hidden_states), final_norm)

    return build


def built_decoder_rules(module: DecoderLM, prefixes: tuple[str, ...] = (r"model\.",)) -> list[Rule]:
    """decoder_rules for the layers (and final norm) `module` was built with, under each key prefix."""
    return [rule for prefix in prefixes for rule in decoder_rules(len(module.layers), "norm" in module, prefix)]
