"""FLUX.2's transformer under the original code's layer names (black-forest-labs/flux2), as LoRAs trained with
ai-toolkit and saved for ComfyUI name it: the rules that give diffusers' checkpoint keys (core/family.py
`lora_layout`). Three things differ beyond names: a double block fuses Q, K and V into one `qkv` Linear per stream,
the final modulation stores (shift, scale) where diffusers stores (scale, shift), and the single blocks' `linear1`
and `linear2` are diffusers' fused `to_qkv_mlp_proj` and `to_out` as they are."""

from __future__ import annotations

from ...checkpoint import Rule, fused, swap_halves

_WB = r"(weight|bias)"
ORIGINAL_LAYOUT_RULES = (
    Rule(rf"img_in\.{_WB}", r"x_embedder.\1"),
    Rule(rf"txt_in\.{_WB}", r"context_embedder.\1"),
    Rule(rf"time_in\.in_layer\.{_WB}", r"time_guidance_embed.timestep_embedder.linear_1.\1"),
    Rule(rf"time_in\.out_layer\.{_WB}", r"time_guidance_embed.timestep_embedder.linear_2.\1"),
    Rule(rf"guidance_in\.in_layer\.{_WB}", r"time_guidance_embed.guidance_embedder.linear_1.\1"),
    Rule(rf"guidance_in\.out_layer\.{_WB}", r"time_guidance_embed.guidance_embedder.linear_2.\1"),
    Rule(rf"(single_stream_modulation|double_stream_modulation_img|double_stream_modulation_txt)\.lin\.{_WB}",
         r"\1.linear.\2"),
    *fused(rf"double_blocks\.(\d+)\.img_attn\.qkv\.{_WB}",
           tuple(rf"transformer_blocks.\1.attn.to_{p}.\2" for p in "qkv"), (1, 1, 1)),
    *fused(rf"double_blocks\.(\d+)\.txt_attn\.qkv\.{_WB}",
           tuple(rf"transformer_blocks.\1.attn.add_{p}_proj.\2" for p in "qkv"), (1, 1, 1)),
    Rule(rf"double_blocks\.(\d+)\.img_attn\.proj\.{_WB}", r"transformer_blocks.\1.attn.to_out.0.\2"),
    Rule(rf"double_blocks\.(\d+)\.txt_attn\.proj\.{_WB}", r"transformer_blocks.\1.attn.to_add_out.\2"),
    Rule(rf"double_blocks\.(\d+)\.img_mlp\.0\.{_WB}", r"transformer_blocks.\1.ff.linear_in.\2"),
    Rule(rf"double_blocks\.(\d+)\.img_mlp\.2\.{_WB}", r"transformer_blocks.\1.ff.linear_out.\2"),
    Rule(rf"double_blocks\.(\d+)\.txt_mlp\.0\.{_WB}", r"transformer_blocks.\1.ff_context.linear_in.\2"),
    Rule(rf"double_blocks\.(\d+)\.txt_mlp\.2\.{_WB}", r"transformer_blocks.\1.ff_context.linear_out.\2"),
    Rule(rf"single_blocks\.(\d+)\.linear1\.{_WB}", r"single_transformer_blocks.\1.attn.to_qkv_mlp_proj.\2"),
    Rule(rf"single_blocks\.(\d+)\.linear2\.{_WB}", r"single_transformer_blocks.\1.attn.to_out.\2"),
    Rule(rf"final_layer\.linear\.{_WB}", r"proj_out.\1"),
    Rule(rf"final_layer\.adaLN_modulation\.1\.{_WB}", r"norm_out.linear.\1", transform=swap_halves),
)
