"""How the FLUX.1 transformer splits across ranks (core/tensor_parallel.py): by attention heads and MLP units.

Double-stream blocks: the shared joint attention's heads and both GELU feed-forwards' hidden units split.
Single-stream blocks: q, k, v and the MLP's input projection split by heads and hidden units; the output
projection reads [attention | MLP], so each rank multiplies its slice of both parts and the ranks sum.
Every block's own modulation (dim -> 6 dim or 3 dim, a sixth of the model), the prompt embedder and the
output norm's modulation take whole (replicated) inputs: each rank multiplies its slice of the input.
The timestep, guidance and pooled-text embedders, the latent projections and the norms are replicated.
"""

from __future__ import annotations

from ...tensor_parallel import COLUMN, ROW, ShardRule, TensorParallelPlan, joint_attention_rules, units_divide
from .transformer import MLP_RATIO


def _hidden(config) -> int:
    return int(config.inner_dim * MLP_RATIO)


TENSOR_PARALLEL = TensorParallelPlan(
    rules=(
        *joint_attention_rules(r"transformer_blocks\.\d+"),
        ShardRule(r"transformer_blocks\.\d+\.(ff|ff_context)\.net\.0\.proj", COLUMN),
        ShardRule(r"transformer_blocks\.\d+\.(ff|ff_context)\.net\.2", ROW),
        ShardRule(r"single_transformer_blocks\.\d+\.(attn\.to_q|attn\.to_k|attn\.to_v|proj_mlp)", COLUMN),
        ShardRule(r"single_transformer_blocks\.\d+\.proj_out", ROW, lambda c: [c.inner_dim]),
        ShardRule(r"transformer_blocks\.\d+\.(norm1|norm1_context)\.linear|single_transformer_blocks\.\d+\.norm\.linear",
                  ROW, whole_input=True),
        ShardRule(r"context_embedder|norm_out\.linear", ROW, whole_input=True),
    ),
    check=units_divide(attention_heads=lambda c: c.num_attention_heads, MLP_units=_hidden),
)
