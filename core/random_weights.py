"""Writing random-weight component folders in the diffusers layout, for every family's random models.

A module built from a config gives the names and shapes; its weights stay lazy (MLX initializes on
evaluation) and each tensor is made, written and freed in turn (core/safetensors.py), so writing a
full-size model holds about one tensor in memory, not the model. The VAE's encoder half, which quantbench
never runs but diffusers and mflux load with every AutoencoderKL, is written too.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import __version__
from .atomic import destination_of
from .blocks.tokenizer_files import train_tokenizer, write_tokenizer_folder
from .disk_space import check_free_space
from .errors import InvalidRequest
from .safetensors import write_safetensors

WORDS = ("a an the small large red orange yellow green blue purple pink white black grey circle square "
         "triangle star ring on left right top bottom center over under striped checked flat gradient sunset "
         "sky background cat dog sitting window photo of with and in").split()
# Random weights draw noise: the lab's probe pictures check arithmetic, not content.
PROBE = {"size": 64, "steps": 4, "prompts": 1}

# While set (tallying()), write_component counts each component's tensor bytes here and writes no weights.
_TALLY: ContextVar[list[int] | None] = ContextVar("quantbench_random_weights_tally", default=None)


@contextmanager
def tallying() -> Iterator[list[int]]:
    """Within, write_component writes each component's config but no weights: it appends the bytes its tensors
    would take to the list this yields (nothing is drawn: the tensors stay lazy and are only counted)."""
    tally: list[int] = []
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def check_width_scale(width_scale: float) -> None:
    if not 0 < width_scale <= 1:
        raise InvalidRequest(f"width scale {width_scale} is not allowed: use a number in (0, 1]")


def narrow(width: int, width_scale: float, step: int = 64) -> int:
    """A width narrowed by `width_scale`, in whole steps (64 for hidden widths, 32 for the VAE's channels)."""
    return max(step, round(width * width_scale / step) * step)


def narrowed(shape, width_scale: float):
    """A random model's shape (a dataclass with heads, text_heads, text_kv_heads, text_hidden, text_intermediate
    and vae_channels) with every width narrowed by `width_scale`; depth and head sizes stay, so per-block
    costs scale as width^2."""
    check_width_scale(width_scale)
    if width_scale == 1:
        return shape
    text_heads = max(2, round(shape.text_heads * width_scale))
    kv_heads = max(d for d in range(1, text_heads + 1) if text_heads % d == 0 and d <= shape.text_kv_heads)
    return replace(
        shape, heads=max(1, round(shape.heads * width_scale)), text_heads=text_heads, text_kv_heads=kv_heads,
        text_hidden=narrow(shape.text_hidden, width_scale),
        text_intermediate=narrow(shape.text_intermediate, width_scale),
        vae_channels=tuple(narrow(c, width_scale, 32) for c in shape.vae_channels))


def module_weights(module: nn.Module, prefix: str = "", pytorch_convs: bool = False) -> dict[str, mx.array]:
    """The module's parameters by checkpoint key (`prefix` + name), still lazy; with `pytorch_convs` 4-D
    convolution weights go back to PyTorch's (out, in, kh, kw). Build the module inline and keep no
    reference to it: it would hold every written value in memory."""
    return {prefix + k: (v.transpose(0, 3, 1, 2) if pytorch_convs and v.ndim == 4 else v)
            for k, v in tree_flatten(module.parameters())}


def encoder_weights(config: dict) -> dict[str, mx.array]:
    """The encoder half of an AutoencoderKL (and quant_conv), as diffusers names and shapes them.

    quantbench only decodes, but diffusers and mflux load the whole autoencoder: a random model without its
    encoder would load there as no real checkpoint does. Lazy: each tensor is made when written."""
    channels, latent = config["block_out_channels"], config["latent_channels"]
    weights: dict[str, mx.array] = {}

    def conv(name: str, cin: int, cout: int, k: int = 3) -> None:
        bound = (cin * k * k) ** -0.5  # MLX's and PyTorch's default uniform bound
        weights[f"{name}.weight"] = mx.random.uniform(-bound, bound, (cout, cin, k, k))
        weights[f"{name}.bias"] = mx.random.uniform(-bound, bound, (cout,))

    def norm(name: str, c: int) -> None:
        weights[f"{name}.weight"], weights[f"{name}.bias"] = mx.ones((c,)), mx.zeros((c,))

    def linear(name: str, c: int) -> None:
        bound = c ** -0.5
        weights[f"{name}.weight"] = mx.random.uniform(-bound, bound, (c, c))
        weights[f"{name}.bias"] = mx.random.uniform(-bound, bound, (c,))

    def resnet(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout)
        if cin != cout:
            conv(f"{name}.conv_shortcut", cin, cout, 1)

    conv("encoder.conv_in", config["in_channels"], channels[0])
    for i, cout in enumerate(channels):
        cin = channels[max(i - 1, 0)]
        for j in range(config["layers_per_block"]):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i < len(channels) - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", cout, cout)
    last = channels[-1]
    for j in range(2):
        resnet(f"encoder.mid_block.resnets.{j}", last, last)
    if config["mid_block_add_attention"]:
        norm("encoder.mid_block.attentions.0.group_norm", last)
        for part in ("to_q", "to_k", "to_v", "to_out.0"):
            linear(f"encoder.mid_block.attentions.0.{part}", last)
    norm("encoder.conv_norm_out", last)
    conv("encoder.conv_out", last, 2 * latent)
    if config["use_quant_conv"]:
        conv("quant_conv", 2 * latent, 2 * latent, 1)
    return weights


def write_component(folder: Path, config: dict, weights: dict[str, mx.array], dtype: mx.Dtype,
                     max_shard_bytes: int, stem: str) -> None:
    """Write `weights` (lazy; consumed) in shards of at most `max_shard_bytes`, with an index when several; refused
    first, in one line, when the disk lacks the room for them (the whole model's room was checked before any
    component was written; this one's is checked again as it comes, the disk being shared)."""
    needed = sum(math.prod(a.shape) * _stored_size(a, dtype) for a in weights.values())
    tally = _TALLY.get()
    if tally is None:
        check_free_space(destination_of(folder), needed, "this component of the random model")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if tally is not None:
        tally.append(needed)
        return
    shards: list[dict[str, mx.array]] = [{}]
    size = 0
    for name in list(weights):
        array = weights.pop(name)
        array = array.astype(dtype) if mx.issubdtype(array.dtype, mx.floating) else array
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    total = sum(a.nbytes for shard in shards for a in shard.values())
    if len(shards) == 1:
        write_safetensors(folder / f"{stem}.safetensors", shards[0], {"format": "pt"}, consume=True)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        filename = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        weight_map.update({name: filename for name in shard})
        write_safetensors(folder / filename, shard, {"format": "pt"}, consume=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _stored_size(array: mx.array, dtype: mx.Dtype) -> int:
    return dtype.size if mx.issubdtype(array.dtype, mx.floating) else array.dtype.size


def write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A small byte-level BPE over a few words, with a Qwen3-style chat template."""
    write_tokenizer_folder(train_tokenizer([" ".join(WORDS)] * 4, min(vocab_size, 512)), folder)


def write_index(folder: Path, index: dict, scheduler: dict, random_weights: dict) -> None:
    """model_index.json (with what made the random weights, and a small probe) and the scheduler config."""
    index = {**index, "quantbench": {**random_weights, "version": __version__, "probe": PROBE}}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
