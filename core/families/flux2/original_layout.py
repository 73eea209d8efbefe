"""FLUX.2's transformer under the original code's layer names (black-forest-labs/flux2), as LoRAs trained with
ai-toolkit and saved for ComfyUI name it: the rules that give diffusers' checkpoint keys (core/family.py
`lora_layout`). Three things differ beyond names: a double block fuses Q, K and V into one `qkv` Linear per stream,
the final modulation stores (shift, scale) where diffusers stores (scale, shift), and the single blocks' `linear1`
and `linear2` are diffusers' fused `to_qkv_mlp_proj` and `to_out` as they are."""

from __future__ import annotations

from ...blocks.bfl_layout import BFL_SHARED_RULES, WEIGHT_OR_BIAS as _WB
from ...checkpoint import Rule

ORIGINAL_LAYOUT_RULES = (
    *BFL_SHARED_RULES,  # inputs, the double blocks' attention, the output (the (shift, scale) swap included)
    Rule(rf"time_in\.in_layer\.{_WB}", r"time_guidance_embed.timestep_embedder.linear_1.\1"),
    Rule(rf"time_in\.out_layer\.{_WB}", r"time_guidance_embed.timestep_embedder.linear_2.\1"),
    Rule(rf"guidance_in\.in_layer\.{_WB}", r"time_guidance_embed.guidance_embedder.linear_1.\1"),
    Rule(rf"guidance_in\.out_layer\.{_WB}", r"time_guidance_embed.guidance_embedder.linear_2.\1"),
    Rule(rf"(single_stream_modulation|double_stream_modulation_img|double_stream_modulation_txt)\.lin\.{_WB}",
         r"\1.linear.\2"),
    Rule(rf"double_blocks\.(\d+)\.img_mlp\.0\.{_WB}", r"transformer_blocks.\1.ff.linear_in.\2"),
    Rule(rf"double_blocks\.(\d+)\.img_mlp\.2\.{_WB}", r"transformer_blocks.\1.ff.linear_out.\2"),
    Rule(rf"double_blocks\.(\d+)\.txt_mlp\.0\.{_WB}", r"transformer_blocks.\1.ff_context.linear_in.\2"),
    Rule(rf"double_blocks\.(\d+)\.txt_mlp\.2\.{_WB}", r"transformer_blocks.\1.ff_context.linear_out.\2"),
    Rule(rf"single_blocks\.(\d+)\.linear1\.{_WB}", r"single_transformer_blocks.\1.attn.to_qkv_mlp_proj.\2"),
    Rule(rf"single_blocks\.(\d+)\.linear2\.{_WB}", r"single_transformer_blocks.\1.attn.to_out.\2"),
)
