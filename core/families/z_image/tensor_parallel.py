"""How the Z-Image transformer splits across ranks (core/tensor_parallel.py): by attention heads and MLP units.

Every block (the main layers and both refiners) is single-stream: q, k, v split by heads and the output
projection adds the ranks' heads up; the SwiGLU's gate and value projections (w1, w3) split their hidden
units and w2 adds them up. The per-block modulations read the small timestep embedding (256 wide) and
stay replicated with the embedders, the final layers and the norms.
"""

from __future__ import annotations

import mlx.nn as nn

from ...tensor_parallel import COLUMN, ROW, ShardRule, TensorParallelPlan, units_divide

BLOCKS = r"(layers|noise_refiner|context_refiner)\.\d+"


def _localize(module: nn.Module, ranks: int) -> None:
    """Attention reshapes its projections into `heads` heads: this rank's."""
    for blocks in (module.layers, module.noise_refiner, module.context_refiner):
        for block in blocks:
            block.attention.heads //= ranks


TENSOR_PARALLEL = TensorParallelPlan(
    rules=(
        ShardRule(BLOCKS + r"\.attention\.(to_q|to_k|to_v)", COLUMN),
        ShardRule(BLOCKS + r"\.attention\.to_out\.0", ROW),
        ShardRule(BLOCKS + r"\.feed_forward\.(w1|w3)", COLUMN),
        ShardRule(BLOCKS + r"\.feed_forward\.w2", ROW),
    ),
    check=units_divide(attention_heads=lambda c: c.n_heads, MLP_units=lambda c: c.ffn_dim),
    localize=_localize,
)
