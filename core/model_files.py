"""Reading a model folder's JSON files, each value checked where it enters.

model_index.json, every component's config.json and a safetensors index go through here, so the rest of
the engine may trust their shapes. A file that is not a regular file holding a JSON object, a NaN or
infinite number anywhere, a count (layers, heads, channels, widths) that is not a whole number in a
plausible range, a model_index.json setting of the wrong kind, or a shard listed outside its folder, is a
one-line CheckpointError naming the file and the key, before anything is built or allocated.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import types
import typing
from pathlib import Path

from .errors import CheckpointError
from .file_memo import FileMemo
from .json_text import parse_json
from .safetensors import check_regular_file, open_regular_file

MAX_JSON_BYTES = 64 << 20  # the largest config or index we read (a 1000-shard index is ~100 KB)
MAX_DEPTH = 4096  # layers, blocks, heads: far above any real model, far below what would hang the engine
MAX_WIDTH = 1 << 24  # hidden sizes, channels, vocabularies, positions
# What a config key holds is told by its name, in the diffusers and transformers conventions every family
# follows; the first matching rule applies. Keys no rule names are left to the module that reads them.
_LISTS_OF_SIZES = {"block_out_channels", "decoder_block_out_channels", "axes_dims_rope", "dim_mult", "mrope_section"}
_MAY_BE_NULL = {"out_channels", "decoder_block_out_channels", "head_dim", "num_key_value_heads", "max_window_layers",
                "pooled_projection_dim", "siglip_feat_dim", "sliding_window", "scaling_factor", "shift_factor",
                "latents_mean", "latents_std", "patch_size", "scale_factor_spatial", "scale_factor_temporal"}
_RULES: list[tuple[re.Pattern, str]] = [(re.compile(pattern), kind) for pattern, kind in (
    (r"\w*token_id|\w*token_index|vision_feature_layer", "integer"),
    (r"patch_size", "size or sizes"),
    (r"\w*indexes", "indexes"),
    (r"num_\w*layers|\w*layers(_per_block)?|num_res_blocks|depth|num_single_layers", "depth"),
    (r"\w*heads", "count"),
    (r"num_\w+|\w+_channels|\w*_dim|head_dim|d_model|d_ff|d_kv|\w*hidden_size|intermediate_size|"
     r"vocab_size|norm_num_groups|max_position_embeddings|sample_size|image_size|window_size|\w+_merge_size|"
     r"tokens_per_second|relative_attention_\w+", "size"),
    (r"scale_factor_(spatial|temporal)", "size"),  # Wan-style VAEs' compression (not a boolean scale_* flag)
    (r"\w*(eps|epsilon|theta)", "positive number"),
    (r"\w*(ratio|factor|momentum|range|dropout|dropout_rate|scale|shift)", "number"),
    (r"rope_(parameters|scaling)|\w+_config", "object"),
    (r"latents_(mean|std)", "numbers"),
    (r"(use|is|tie|force|scale|zero|multimodal)_\w+|guidance_embeds|mid_block_add_attention|\w*_bias", "boolean"),
    (r"temperal_downsample", "booleans"),
    (r"\w+_block_types|architectures|layer_types", "names"),
    (r"act_fn|\w*_act(_fn)?|_class_name|model_type|rope_type|type|feed_forward_proj|\w*dtype", "name"),
)]


def present(path: Path) -> bool:
    """Whether an optional file of a model folder is there: False when nothing has its name, True for a regular
    file (or a link to one). Anything else by that name (a folder, a FIFO that would block the reader forever, a
    device such as /dev/zero that never ends, a link to nowhere) is a CheckpointError naming it, not a file quietly
    taken as absent and not a hang."""
    path = Path(path)
    if not os.path.lexists(path):
        return False
    check_regular_file(path)
    return True


def read_text(path: Path, limit: int = MAX_JSON_BYTES) -> str:
    """A regular file's UTF-8 text (a chat template, merges.txt); CheckpointError for anything else."""
    path = Path(path)
    raw = _read_at_most(path, limit, f"({limit >> 20} MB at most)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None


def _read_at_most(path: Path, limit: int, why: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; CheckpointError "implausibly large {why}" past it."""
    with open_regular_file(path) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise CheckpointError(f"{path}: implausibly large {why}")
    return raw


def read_json_object(path: Path) -> dict:
    """A JSON object from a regular file of plausible size; NaN and Infinity (which Python's json accepts)
    are refused."""
    path = Path(path)
    raw = _read_at_most(path, MAX_JSON_BYTES, "for a JSON settings file")
    try:
        data = parse_json(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found a {_kind(data)}")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as infinity
        raise ValueError(f"{text} is out of range")
    return value


def read_config(path: Path) -> dict:
    """A component's config.json, with every count checked (nested configs too, e.g. text_config)."""
    config = read_json_object(path)
    _check_values(path, config)
    _check_rope(path, config)
    _check_blocks(path, config)
    return config


# read_config and read_weight_map, each file read once while it stays as it was (file_memo.py): one run asks for the
# same components' configs and indexes through many readers. Each caller gets a copy of its own to change.
config_memo = FileMemo(read_config, copy.deepcopy)


def config_dataclass(cls, config: dict, where: str, rope_axes: int | None = None):
    """`cls(**values)` from the config's keys that are fields of the dataclass `cls`, each checked against the
    field's type (int, float, bool, str, tuple[int, ...], or any of them | None); `rope_axes`: how many
    position axes the family's RoPE has, which axes_dims_rope must match."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name not in config:
            continue
        value = config[field.name]
        if not _fits(value, hints[field.name]):
            raise CheckpointError(f"{where}: {field.name} is {json.dumps(value)}; expected "
                                  f"{_type_name(hints[field.name])}")
        values[field.name] = tuple(value) if isinstance(value, (list, tuple)) else value
    made = cls(**values)
    axes, head = getattr(made, "axes_dims_rope", None), getattr(made, "attention_head_dim", None)
    if rope_axes is not None and axes is not None and len(axes) != rope_axes:
        raise CheckpointError(f"{where}: axes_dims_rope {json.dumps(list(axes))} must give {rope_axes} sizes, one "
                              f"per position axis of this model")
    if axes is not None and head is not None and sum(axes) != head:
        raise CheckpointError(f"{where}: axes_dims_rope {json.dumps(list(axes))} must add up to attention_head_dim "
                              f"{head}")
    return made


def _fits(value, hint) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _whole(value)
    if hint is float:
        return _number(value)
    if hint is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(value is None if a is type(None) else _fits(value, a) for a in args)
    if origin is tuple:
        item = args[0] if args else int
        return isinstance(value, (list, tuple)) and len(value) <= 64 and all(_fits(v, item) for v in value)
    return True  # a field type this reader does not know: left to the module


def _type_name(hint) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(args[0]).removeprefix('a ')}s"
    return " or ".join(_type_name(a) for a in args) + (" or null" if type(None) in typing.get_args(hint) else "")


def _check_blocks(path: Path, config: dict) -> None:
    """An autoencoder has one block per width, going down and coming up (diffusers asserts the same)."""
    widths = config.get("decoder_block_out_channels") or config.get("block_out_channels")
    for key in ("up_block_types", "down_block_types"):
        if isinstance(widths, list) and key in config and len(config[key]) != len(widths):
            raise CheckpointError(f"{path}: {key} lists {len(config[key])} blocks for {len(widths)} widths in "
                                  f"block_out_channels")


def _check_rope(path: Path, config: dict) -> None:
    axes, head = config.get("axes_dims_rope"), config.get("attention_head_dim")
    if isinstance(axes, list) and (any(a % 2 for a in axes) or (isinstance(head, int) and sum(axes) != head)):
        raise CheckpointError(f"{path}: axes_dims_rope {json.dumps(axes)} must be even sizes adding up to "
                              f"attention_head_dim {head}")


def _check_values(path: Path, config: dict, prefix: str = "") -> None:
    for key, value in config.items():
        name = f"{prefix}{key}"
        kind = "sizes" if key in _LISTS_OF_SIZES else next((k for r, k in _RULES if r.fullmatch(str(key))), None)
        if isinstance(value, dict) and kind in (None, "object"):  # a nested config (text_config, rope_parameters)
            _check_values(path, value, f"{name}.")
            continue
        if kind is None or (value is None and key in _MAY_BE_NULL):
            continue
        if not _CHECKS[kind](value):
            raise CheckpointError(f"{path}: {name} is {json.dumps(value)}; expected {_EXPECTED[kind]}")


def _sizes(value, lowest: int, highest: int) -> bool:
    return isinstance(value, list) and 0 < len(value) <= 64 and all(_whole(v) and lowest <= v <= highest
                                                                     for v in value)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # finite: read_json_object saw to it


_CHECKS = {
    "integer": lambda v: v is None or _whole(v),
    "size": lambda v: _whole(v) and 1 <= v <= MAX_WIDTH,
    "depth": lambda v: _whole(v) and 0 <= v <= MAX_DEPTH,
    "count": lambda v: _whole(v) and 1 <= v <= MAX_DEPTH,
    "sizes": lambda v: _sizes(v, 1, MAX_WIDTH),
    "size or sizes": lambda v: (_whole(v) and 1 <= v <= MAX_WIDTH) or _sizes(v, 1, MAX_WIDTH),
    "indexes": lambda v: isinstance(v, list) and len(v) <= MAX_DEPTH and all(_whole(i) and i >= 0 for i in v),
    "number": _number,
    "positive number": lambda v: _number(v) and v > 0,
    "object": lambda v: v is None or isinstance(v, dict),
    "numbers": lambda v: isinstance(v, list) and len(v) <= MAX_WIDTH and all(_number(x) for x in v),
    "boolean": lambda v: isinstance(v, bool),
    "booleans": lambda v: isinstance(v, list) and len(v) <= 64 and all(isinstance(x, bool) for x in v),
    "name": lambda v: isinstance(v, str),
    "names": lambda v: isinstance(v, list) and len(v) <= MAX_DEPTH and all(isinstance(x, str) for x in v),
}
_EXPECTED = {
    "integer": "a whole number", "size": f"a whole number from 1 to {MAX_WIDTH}",
    "depth": f"a whole number from 0 to {MAX_DEPTH}", "count": f"a whole number from 1 to {MAX_DEPTH}", "sizes": f"a list of whole numbers from 1 to {MAX_WIDTH}",
    "size or sizes": "a whole number or a list of them", "indexes": "a list of layer numbers",
    "number": "a number", "positive number": "a number above 0", "object": "an object or null", "numbers": "a list of numbers", "boolean": "true or false",
    "booleans": "a list of true/false", "name": "a string", "names": "a list of strings",
}


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


# ---------------------------------------------------------------------------------------------
# model_index.json

def read_model_index(folder: Path) -> dict:
    """model_index.json with quantbench's own settings checked (defaults, sizes, layers, the probe); read once
    while the file stays as it was (model_index_memo), a copy of its own to each caller."""
    return model_index_memo(Path(folder) / "model_index.json")


def _read_model_index_file(path: Path) -> dict:
    index = read_json_object(path)
    name = index.get("_class_name", "")
    if not isinstance(name, str):
        raise CheckpointError(f"{path}: _class_name must be a string")
    for key, check in _INDEX_CHECKS.items():
        if key in index and not (index[key] is None and key == "text_encoder_out_layers") and not check(index[key]):
            raise CheckpointError(f"{path}: {key} {json.dumps(index[key])} is not {_INDEX_EXPECTED[key]}")
    probe = index.get("quantbench", {})
    if not isinstance(probe, dict) or not isinstance(probe.get("probe", {}), dict):
        raise CheckpointError(f"{path}: quantbench must be an object with an optional probe object")
    for key, value in probe.get("probe", {}).items():
        if not (_whole(value) and 1 <= value <= 4096):
            raise CheckpointError(f"{path}: quantbench.probe.{key} {json.dumps(value)} is not a whole number "
                                  f"from 1 to 4096")
    return index


# One generation asked for model_index.json through a dozen readers (the family decision, each family's defaults, the
# native size, the catalog entry of each fit check, the load), each reading it again.
model_index_memo = FileMemo(_read_model_index_file, copy.deepcopy)


def _in(lowest, highest):
    return lambda v: _whole(v) and lowest <= v <= highest


def _layers(value) -> bool:
    return isinstance(value, list) and len(value) <= 64 and all(_in(0, MAX_DEPTH)(v) for v in value)


def _scale(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and 0 <= value <= 100


_INDEX_CHECKS = {
    "default_steps": _in(1, 1000), "default_guidance": _scale, "default_width": _in(16, 4096),
    "default_height": _in(16, 4096), "max_sequence_length": _in(1, 65536), "is_distilled": lambda v: isinstance(v, bool),
    "text_encoder_out_layers": _layers,
}
_INDEX_EXPECTED = {
    "default_steps": "a whole number from 1 to 1000", "default_guidance": "a number from 0 to 100",
    "default_width": "a whole number from 16 to 4096", "default_height": "a whole number from 16 to 4096",
    "max_sequence_length": "a whole number from 1 to 65536", "is_distilled": "true or false",
    "text_encoder_out_layers": "a list of layer numbers",
}


# ---------------------------------------------------------------------------------------------
# *.safetensors.index.json

def read_weight_map(path: Path) -> dict[str, str]:
    """The index's tensor -> shard map; every shard must be a file name inside the component folder."""
    weight_map = read_json_object(path).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: not a valid safetensors index (weight_map must map tensor names to files)")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{path}: shard {shard!r} is not a file in {path.parent} (refused: shards must "
                                  f"sit beside their index)")
    return weight_map


weight_map_memo = FileMemo(read_weight_map, dict)
