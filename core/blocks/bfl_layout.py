"""The layer names of Black Forest Labs' original FLUX code that FLUX.1 and FLUX.2 share, as rules to diffusers'
checkpoint keys (core/checkpoint.py `Rule`): the image and prompt inputs, each double block's attention (its fused
`qkv` per stream: diffusers' separate Q, K and V) and the output, whose final modulation stores (shift, scale) where
diffusers stores (scale, shift). Each family adds the names that differ (timestep embedders, MLPs, single blocks)."""

from __future__ import annotations

import mlx.core as mx

from ..checkpoint import Rule, fused

WEIGHT_OR_BIAS = r"(weight|bias)"
_WB = WEIGHT_OR_BIAS


def swap_halves(w: mx.array) -> mx.array:
    """(shift, scale) rows -> (scale, shift): the final modulation's order in diffusers."""
    half = w.shape[0] // 2
    return mx.concatenate([w[half:], w[:half]], axis=0)


BFL_SHARED_RULES: tuple[Rule, ...] = (
    Rule(rf"img_in\.{_WB}", r"x_embedder.\1"),
    Rule(rf"txt_in\.{_WB}", r"context_embedder.\1"),
    # double blocks: one stream is img (the image tokens), the other txt (the prompt tokens)
    *fused(rf"double_blocks\.(\d+)\.img_attn\.qkv\.{_WB}",
           tuple(rf"transformer_blocks.\1.attn.to_{p}.\2" for p in "qkv"), (1, 1, 1)),
    *fused(rf"double_blocks\.(\d+)\.txt_attn\.qkv\.{_WB}",
           tuple(rf"transformer_blocks.\1.attn.add_{p}_proj.\2" for p in "qkv"), (1, 1, 1)),
    Rule(rf"double_blocks\.(\d+)\.img_attn\.proj\.{_WB}", r"transformer_blocks.\1.attn.to_out.0.\2"),
    Rule(rf"double_blocks\.(\d+)\.txt_attn\.proj\.{_WB}", r"transformer_blocks.\1.attn.to_add_out.\2"),
    Rule(rf"final_layer\.linear\.{_WB}", r"proj_out.\1"),
    Rule(rf"final_layer\.adaLN_modulation\.1\.{_WB}", r"norm_out.linear.\1", transform=swap_halves),
)
