"""How the FLUX.2 transformer splits across ranks (core/tensor_parallel.py): by attention heads and MLP units.

Double-stream blocks: q, k, v of both streams are column-parallel (each rank holds heads/N whole heads),
their output projections row-parallel; the SwiGLU feed-forwards split their hidden units (the input
projection holds [gate | value], so each rank takes its slice of both). Single-stream blocks fuse
[q | k | v | gate | value] into one input projection and [attention | MLP] into one output projection:
the same split, part by part. The shared modulation, the prompt embedder and the output norm's
modulation take whole (replicated) inputs: each rank multiplies its slice of the input and the ranks
sum. The timestep embedders, the latent input and output projections and the norms are replicated.
"""

from __future__ import annotations

import mlx.nn as nn

from ...tensor_parallel import COLUMN, ROW, ShardRule, TensorParallelPlan, joint_attention_rules, units_divide


def _hidden(config) -> int:
    return int(config.inner_dim * config.mlp_ratio)


def _single_in_parts(config) -> list[int]:
    inner = config.inner_dim
    return [inner, 2 * inner, 3 * inner, 3 * inner + _hidden(config)]


def _localize(module: nn.Module, ranks: int) -> None:
    """The single blocks cut their fused projection by these counts: make them this rank's."""
    for block in module.single_transformer_blocks:
        block.attn.inner //= ranks
        block.attn.mlp_hidden //= ranks


TENSOR_PARALLEL = TensorParallelPlan(
    rules=(
        *joint_attention_rules(r"transformer_blocks\.\d+"),
        ShardRule(r"transformer_blocks\.\d+\.(ff|ff_context)\.linear_in", COLUMN, lambda c: [_hidden(c)]),
        ShardRule(r"transformer_blocks\.\d+\.(ff|ff_context)\.linear_out", ROW),
        ShardRule(r"single_transformer_blocks\.\d+\.attn\.to_qkv_mlp_proj", COLUMN, _single_in_parts),
        ShardRule(r"single_transformer_blocks\.\d+\.attn\.to_out", ROW, lambda c: [c.inner_dim]),
        # Large layers on replicated inputs (the shared modulation, the prompt embedder, the output norm):
        # each rank multiplies its slice of the input and the ranks sum.
        ShardRule(r"(double_stream_modulation_img|double_stream_modulation_txt|single_stream_modulation)\.linear",
                  ROW, whole_input=True),
        ShardRule(r"context_embedder|norm_out\.linear", ROW, whole_input=True),
    ),
    check=units_divide(attention_heads=lambda c: c.num_attention_heads, MLP_units=_hidden),
    localize=_localize,
)
