"""BFL's original FLUX.1 checkpoints: one safetensors file in the layout of black-forest-labs/flux.

`flux1-dev.safetensors` and `flux1-schnell.safetensors` (shipped at the top of the FLUX.1
repositories, beside the diffusers folders) name the transformer's tensors after the original code:
img_in, txt_in, time_in, vector_in, guidance_in, double_blocks, single_blocks, final_layer. Three
things differ beyond names: double blocks fuse Q, K and V into one `qkv` Linear per stream, single
blocks fuse Q, K, V and the MLP input into `linear1`, and the final modulation stores (shift, scale)
where diffusers stores (scale, shift).

The mapping is the declarative rule list below, read with "every matching rule applies" (a fused
tensor gives several diffusers tensors); `map_single_file` presents the file as a component with
diffusers keys (checkpoint.map_component), so the usual loader, quantization and reports apply
unchanged. Slices are taken lazily: the file is read layer by layer as the model is materialized.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...blocks.bfl_layout import BFL_SHARED_RULES, WEIGHT_OR_BIAS as _WB
from ...checkpoint import (Component, MappedComponent, Rule, TensorInfo, fused, map_component, open_component,
                           read_safetensors_header)
from ...errors import CheckpointError
from ...json_text import parse_json
from ...model_files import present, read_text

# Some conversions (ComfyUI's) keep the original training code's module path in front of every key.
KEY_PREFIX = "model.diffusion_model."
# diffusers' FluxTransformer2DModel hardcodes the MLP ratio; a single block's linear1 is Q, K, V, MLP.
SINGLE_BLOCK_PARTS = (1, 1, 1, 4)


BFL_TRANSFORMER_RULES: list[Rule] = [
    *BFL_SHARED_RULES,  # inputs, the double blocks' attention, the output
    Rule(rf"time_in\.in_layer\.{_WB}", r"time_text_embed.timestep_embedder.linear_1.\1"),
    Rule(rf"time_in\.out_layer\.{_WB}", r"time_text_embed.timestep_embedder.linear_2.\1"),
    Rule(rf"guidance_in\.in_layer\.{_WB}", r"time_text_embed.guidance_embedder.linear_1.\1"),
    Rule(rf"guidance_in\.out_layer\.{_WB}", r"time_text_embed.guidance_embedder.linear_2.\1"),
    Rule(rf"vector_in\.in_layer\.{_WB}", r"time_text_embed.text_embedder.linear_1.\1"),
    Rule(rf"vector_in\.out_layer\.{_WB}", r"time_text_embed.text_embedder.linear_2.\1"),
    Rule(rf"double_blocks\.(\d+)\.img_mod\.lin\.{_WB}", r"transformer_blocks.\1.norm1.linear.\2"),
    Rule(rf"double_blocks\.(\d+)\.txt_mod\.lin\.{_WB}", r"transformer_blocks.\1.norm1_context.linear.\2"),
    Rule(r"double_blocks\.(\d+)\.img_attn\.norm\.query_norm\.scale", r"transformer_blocks.\1.attn.norm_q.weight"),
    Rule(r"double_blocks\.(\d+)\.img_attn\.norm\.key_norm\.scale", r"transformer_blocks.\1.attn.norm_k.weight"),
    Rule(r"double_blocks\.(\d+)\.txt_attn\.norm\.query_norm\.scale", r"transformer_blocks.\1.attn.norm_added_q.weight"),
    Rule(r"double_blocks\.(\d+)\.txt_attn\.norm\.key_norm\.scale", r"transformer_blocks.\1.attn.norm_added_k.weight"),
    Rule(rf"double_blocks\.(\d+)\.img_mlp\.0\.{_WB}", r"transformer_blocks.\1.ff.net.0.proj.\2"),
    Rule(rf"double_blocks\.(\d+)\.img_mlp\.2\.{_WB}", r"transformer_blocks.\1.ff.net.2.\2"),
    Rule(rf"double_blocks\.(\d+)\.txt_mlp\.0\.{_WB}", r"transformer_blocks.\1.ff_context.net.0.proj.\2"),
    Rule(rf"double_blocks\.(\d+)\.txt_mlp\.2\.{_WB}", r"transformer_blocks.\1.ff_context.net.2.\2"),
    # single blocks
    Rule(rf"single_blocks\.(\d+)\.modulation\.lin\.{_WB}", r"single_transformer_blocks.\1.norm.linear.\2"),
    *fused(rf"single_blocks\.(\d+)\.linear1\.{_WB}",
           (*(rf"single_transformer_blocks.\1.attn.to_{p}.\2" for p in "qkv"), r"single_transformer_blocks.\1.proj_mlp.\2"),
           SINGLE_BLOCK_PARTS),
    Rule(r"single_blocks\.(\d+)\.norm\.query_norm\.scale", r"single_transformer_blocks.\1.attn.norm_q.weight"),
    Rule(r"single_blocks\.(\d+)\.norm\.key_norm\.scale", r"single_transformer_blocks.\1.attn.norm_k.weight"),
    Rule(rf"single_blocks\.(\d+)\.linear2\.{_WB}", r"single_transformer_blocks.\1.proj_out.\2"),
]


def map_single_file(source: Component, rules: list[Rule] = BFL_TRANSFORMER_RULES) -> MappedComponent:
    """Present a BFL-layout component under diffusers keys (every rule that matches a key applies)."""
    return map_component(source, rules, KEY_PREFIX)


def is_single_file_layout(keys) -> bool:
    return any(k.removeprefix(KEY_PREFIX).startswith("double_blocks.") for k in keys)


def find_single_file(folder: Path) -> Path | None:
    """The BFL-layout transformer file at the top of a model folder, if there is one (headers only are read)."""
    found = [path for path in sorted(folder.glob("*.safetensors"))
             if is_single_file_layout(read_safetensors_header(path)[0])]
    if len(found) > 1:
        raise CheckpointError(f"{folder}: several FLUX.1 single-file checkpoints ({', '.join(p.name for p in found)}); "
                              "keep one")
    return found[0] if found else None


def infer_config(tensors: dict[str, TensorInfo]) -> dict:
    """A FluxTransformer2DModel config read off a BFL file's tensor shapes (for a file without config.json)."""
    shapes = {k.removeprefix(KEY_PREFIX): t.shape for k, t in tensors.items()}

    def blocks(prefix: str) -> int:
        return len({k.split(".")[1] for k in shapes if k.startswith(prefix + ".")})

    try:
        inner, in_channels = shapes["img_in.weight"]
        head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
        out_channels = shapes["final_layer.linear.weight"][0]
        config = {
            "in_channels": in_channels, "out_channels": None if out_channels == in_channels else out_channels,
            "num_layers": blocks("double_blocks"), "num_single_layers": blocks("single_blocks"),
            "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim,
            "joint_attention_dim": shapes["txt_in.weight"][1],
            "pooled_projection_dim": shapes["vector_in.in_layer.weight"][1],
            "guidance_embeds": "guidance_in.in_layer.weight" in shapes,
        }
    except KeyError as exc:
        raise CheckpointError(f"not a FLUX.1 transformer checkpoint: no {exc.args[0]}") from None
    if head_dim != 128:  # FLUX.1's RoPE axes are known for its head size only
        raise CheckpointError(f"a FLUX.1 checkpoint with attention heads of {head_dim} needs transformer/config.json "
                              "(its RoPE axes cannot be read off the weights)")
    return {**config, "axes_dims_rope": [16, 56, 56]}


@dataclass(frozen=True)
class TransformerSource:
    component: Component  # with diffusers keys
    description: str  # "diffusers folder" or "single file flux1-dev.safetensors"


def open_transformer(folder: Path) -> TransformerSource:
    """The transformer of a FLUX.1 model folder: transformer/ (diffusers or BFL keys), else a BFL file at the top."""
    diffusers_folder = folder / "transformer"
    if _has_weights(diffusers_folder):
        component = open_component(diffusers_folder)
        if is_single_file_layout(component.tensors):
            return TransformerSource(map_single_file(component), "transformer/ in the original BFL layout")
        return TransformerSource(component, "diffusers folder")
    single = find_single_file(folder)
    if single is None:
        raise CheckpointError(f"{folder}: no transformer (neither transformer/ weights nor a FLUX.1 single-file "
                              "checkpoint such as flux1-dev.safetensors)")
    tensors, metadata = read_safetensors_header(single)
    config_path = diffusers_folder / "config.json"
    try:
        config = _read_config(config_path) if present(config_path) else infer_config(tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"{single}: {exc}") from None
    raw = Component(folder, config, tensors, metadata)
    return TransformerSource(map_single_file(raw), f"single file {single.name}")


def _read_config(path: Path) -> dict:
    try:
        return parse_json(read_text(path))
    except ValueError:
        raise CheckpointError(f"{path}: not valid JSON") from None


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")))
