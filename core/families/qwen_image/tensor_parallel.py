"""How the Qwen-Image transformer splits across ranks (core/tensor_parallel.py): by attention heads and MLP units.

Every block is dual-stream: the joint attention's heads and both GELU feed-forwards' hidden units split.
Each block's two modulations (dim -> 6 dim: a third of the model), the prompt projection `txt_in` and the
output norm's modulation take whole (replicated) inputs: each rank multiplies its slice of the input and
the ranks sum. The timestep embedder, `img_in`, `proj_out` and the norms are replicated.
"""

from __future__ import annotations

from ...tensor_parallel import COLUMN, ROW, ShardRule, TensorParallelPlan, joint_attention_rules, units_divide

TENSOR_PARALLEL = TensorParallelPlan(
    rules=(
        *joint_attention_rules(r"transformer_blocks\.\d+"),
        ShardRule(r"transformer_blocks\.\d+\.(img_mlp|txt_mlp)\.net\.0\.proj", COLUMN),
        ShardRule(r"transformer_blocks\.\d+\.(img_mlp|txt_mlp)\.net\.2", ROW),
        ShardRule(r"transformer_blocks\.\d+\.(img_mod|txt_mod)\.1", ROW, whole_input=True),
        ShardRule(r"txt_in|norm_out\.linear", ROW, whole_input=True),
    ),
    check=units_divide(attention_heads=lambda c: c.num_attention_heads, MLP_units=lambda c: 4 * c.inner_dim),
)
