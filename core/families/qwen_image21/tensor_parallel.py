"""How the Qwen-Image 2.1 transformer splits across ranks (core/tensor_parallel.py): by attention heads and
MLP units.

Every block is single-stream: q, k, v split by heads (the prompt's keys and values, computed once per
prompt by the same projections, split with them) and the output projection adds the ranks' heads up; the
SwiGLU's value and gate projections split their hidden units and `out` adds them up. The modulation shared
by all blocks (dim -> 4 dim), the prompt projection's input layer and the output norm's modulation take
whole (replicated) inputs: each rank multiplies its slice of the input and the ranks sum. The timestep
embedder, `img_in`, `proj_out`, the prompt projection's output layer and the norms are replicated.
"""

from __future__ import annotations

from ...tensor_parallel import COLUMN, ROW, ShardRule, TensorParallelPlan, units_divide

TENSOR_PARALLEL = TensorParallelPlan(
    rules=(
        ShardRule(r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)", COLUMN),
        ShardRule(r"transformer_blocks\.\d+\.attn\.to_out\.0", ROW),
        ShardRule(r"transformer_blocks\.\d+\.img_mlp\.(proj|gate_layer)", COLUMN),
        ShardRule(r"transformer_blocks\.\d+\.img_mlp\.out", ROW),
        ShardRule(r"modulation\.1|txt_in\.in_layer|norm_out\.linear", ROW, whole_input=True),
    ),
    check=units_divide(attention_heads=lambda c: c.num_attention_heads,
                       MLP_units=lambda c: c.inner_dim * c.mlp_ratio),
)
