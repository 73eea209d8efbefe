"""A transformer split across the ranks of an mlx.launch job: attention heads and MLP hidden units.

A family declares how its transformer splits (`Family.tensor_parallel`, a TensorParallelPlan): which
Linear layers are column-parallel ("all-to-sharded": the output units, i.e. heads or hidden units,
split; no communication) and which are row-parallel ("sharded-to-all": the matching input units
split; each rank computes a partial product and `mx.distributed.all_sum` adds them up). A fused
layer names its parts (q | k | v | gate | value) so each rank takes its slice of every part.

Loading: MLX's `shard_inplace` gives every split layer its per-rank shape on the lazily loaded tensors; then
`read_own_slices` replaces each split layer's tensors with this rank's slices read straight from the
checkpoint (core/slice_reads.py), quantizes and materializes that layer, and goes to the next: a rank
reads about 1/N of the split layers' bytes and its load peak stays near its own share (streamed
loading). A tensor that loading transforms (a fused single-file layout) is read whole, then sliced.

Quantization: whether a layer is quantized is decided on the whole layer (as on one rank), then
each rank quantizes its own slices with the engine's quantizer. Row-parallel slices begin on a
quantization-group boundary (checked), so every rank's groups are the one-rank groups.

Everything outside the split layers (embeddings, norms, the output projection, what a family's plan
leaves out) is replicated: every rank computes it on identical inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import shard_inplace

from .checkpoint import Component, LoadReport
from .errors import InvalidRequest
from .quant import (GROUP_SIZES, Precision, QuantizationReport, QuantSpec, as_spec, count_parameters, layer_specs,
                    module_at, quantize_layer, quantize_model, replace_layer)
from .slice_reads import can_read_part, own_ranges, read_part

COLUMN = "all-to-sharded"
ROW = "sharded-to-all"


@dataclass(frozen=True)
class ShardRule:
    pattern: str  # full match over the layer path ('transformer_blocks.3.attn.to_q')
    sharding: str  # COLUMN or ROW
    parts: Callable[[object], list[int]] | None = None  # a fused layer: where its parts begin on the split axis
    whole_input: bool = False  # ROW only: the layer's input is replicated, so each rank takes its slice of it

    def boundaries(self, config) -> list[int]:
        return self.parts(config) if self.parts else []


def _nothing_to_localize(module: nn.Module, ranks: int) -> None:
    pass


@dataclass(frozen=True)
class TensorParallelPlan:
    rules: tuple[ShardRule, ...]
    check: Callable[[object, int], str | None]  # why the config cannot split N ways, or None
    # Divide the module attributes that count split units (heads a layer reshapes into, say).
    localize: Callable[[nn.Module, int], None] = _nothing_to_localize

    def rule_for(self, path: str) -> ShardRule | None:
        return next((r for r in self.rules if re.fullmatch(r.pattern, path)), None)


def units_divide(**counts: Callable[[object], int]) -> Callable[[object, int], str | None]:
    """A plan's check: each named count of the config (attention heads, MLP units...) divides by the ranks."""
    def check(config, ranks: int) -> str | None:
        for what, count in counts.items():
            if count(config) % ranks:
                return f"its {count(config)} {what.replace('_', ' ')} do not divide by {ranks}"
        return None
    return check


def joint_attention_rules(block: str) -> tuple[ShardRule, ...]:
    """core/blocks/attention.py's JointAttention at `block` + '.attn': each rank holds whole heads of both
    streams (their q, k, v column-parallel) and the output projections add the ranks' heads up."""
    return (ShardRule(block + r"\.attn\.(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)", COLUMN),
            ShardRule(block + r"\.attn\.(to_out\.0|to_add_out)", ROW))



class PolicyOfWholeLayers:
    """The family's layer policy, answered as it was for the whole (unsplit) layers."""

    def __init__(self, reasons: dict[str, str | None], group_size: int):
        self.reasons = reasons
        self.group_size = group_size

    def full_precision_reason(self, path: str, module: nn.Module, group_size: int | None = None) -> str | None:
        return self.reasons[path]


def check_split(module: nn.Module, plan: TensorParallelPlan, policy, ranks: int, name: str, bits,
                written: Callable[[int], str] | None = None) -> dict[str, str | None]:
    """Refuse in one line a `module` (lazy, never evaluated: `build` allocates nothing) that cannot split
    `ranks` ways when quantized to `bits` (an int, a spec, a {layer: spec} plan or None); else the family's
    reason to keep each Linear or Embedding in full precision (None: it is quantized), answered whole.
    `written(group)`: the request as the user would write it with that group size, for the message."""
    why = plan.check(module.config, ranks)
    if why:
        raise InvalidRequest(f"{name} cannot be split across {ranks} ranks: {why}")

    def spec_of(path: str) -> QuantSpec | None:
        spec = bits.get(path) if isinstance(bits, dict) else bits
        return None if spec is None else as_spec(spec)

    reasons = {}
    for path, layer in module.named_modules():
        if isinstance(layer, (nn.Linear, nn.Embedding)):
            spec = spec_of(path)
            reasons[path] = policy.full_precision_reason(path, layer, spec.group_size if spec else policy.group_size)
    for path, layer in module.named_modules():
        rule = plan.rule_for(path)
        if rule is None or not isinstance(layer, nn.Linear):
            continue
        parts = _parts(layer, rule, module.config)
        if any(size % ranks for size in parts):
            raise InvalidRequest(f"{name}: layer {path} ({parts}) does not split into {ranks} equal parts")
        spec = spec_of(path) if reasons[path] is None else None
        if rule.sharding == ROW and spec is not None and any((size // ranks) % spec.group_size for size in parts):
            raise InvalidRequest(_cut_groups(name, path, parts, ranks, spec, written))
    return reasons


def _cut_groups(name: str, path: str, parts: list[int], ranks: int, spec: QuantSpec,
                written: Callable[[int], str] | None) -> str:
    """Why a row-parallel layer cannot take `spec` split `ranks` ways, and the group sizes that would do
    (`written`: the user's request with another group size, as they would write it)."""
    whole = [size for size in GROUP_SIZES if not any((part // ranks) % size for part in parts)]
    example = written or (lambda size: str(replace(spec, group_size=size)))
    way_out = (f"groups of {' or '.join(map(str, whole))} split whole ({example(whole[0])}) or run on fewer ranks"
               if whole else "no group size splits whole: run on fewer ranks")
    share = " + ".join(str(part // ranks) for part in parts)
    return (f"{name}: layer {path} split {ranks} ways would cut quantization groups of {spec.group_size} (a rank "
            f"takes {share} of its {sum(parts)} inputs): {way_out}")


def shard(module: nn.Module, plan: TensorParallelPlan, policy, group, name: str, bits) -> PolicyOfWholeLayers:
    """Split `module`'s layers in place for this rank, before quantizing it to `bits` (an int, a {layer: bits}
    plan or None); the policy to quantize with."""
    ranks = group.size()
    reasons = check_split(module, plan, policy, ranks, name, bits)
    for path, layer in module.named_modules():
        rule = plan.rule_for(path)
        if rule is not None and isinstance(layer, nn.Linear):
            shard_inplace(layer, rule.sharding, segments=rule.boundaries(module.config) or 1, group=group)
    plan.localize(module, ranks)
    return PolicyOfWholeLayers(reasons, policy.group_size)


def read_own_slices(module: nn.Module, plan: TensorParallelPlan, group, component: Component, report: LoadReport,
                    bits: Precision, policy: PolicyOfWholeLayers, name: str) -> QuantizationReport:
    """After `shard`: each split layer's tensors read from the checkpoint as this rank's slices only, then
    quantized and materialized, one layer at a time; the other layers quantized lazily, as on one rank.
    `report.bytes_read` becomes what this rank reads."""
    decisions, kept = layer_specs(module, bits, policy)
    split = [path for path, layer in module.named_modules() if plan.rule_for(path) and isinstance(layer, nn.Linear)]
    for path in split:  # (paths, not layers: a layer read and quantized is let go at once)
        rule, layer = plan.rule_for(path), module_at(module, path)
        for leaf, axis in (("weight", 0), ("bias", 0)) if rule.sharding == COLUMN else (("weight", -1),):
            info = component.stored(report.stored_as.get(f"{path}.{leaf}", ""))
            if leaf not in layer or info is None or not can_read_part(info):
                continue  # read whole when evaluated, then sliced (shard_inplace's lazy slice)
            runs = own_ranges(info.shape[axis], rule.boundaries(module.config), group.size(), group.rank())
            part = read_part(info, axis, runs)
            if part.shape != layer[leaf].shape:
                raise AssertionError(f"{path}.{leaf}: read {part.shape}, the split layer holds {layer[leaf].shape}")
            report.bytes_read -= info.nbytes - part.nbytes
            layer[leaf] = part
        local = quantize_layer(layer, decisions[path]) if path in decisions else layer
        mx.eval(local.parameters())
        if local is not layer:
            replace_layer(module, path, local)
        del layer, local
    rest = {path: spec for path, spec in decisions.items() if path not in split}
    quantize_model(module, rest, policy, name)
    return count_parameters(module, decisions, kept, name)


def _parts(layer: nn.Linear, rule: ShardRule, config) -> list[int]:
    out_dim, in_dim = layer.weight.shape
    total = out_dim if rule.sharding == COLUMN else in_dim
    edges = [0, *rule.boundaries(config), total]
    return [b - a for a, b in zip(edges, edges[1:])]


class SummedShards(nn.Module):
    """A row-parallel layer: this rank's partial product (whatever layer the engine made of the slice:
    quantized, dense-dequantized or full precision), summed over the ranks, then the bias once. With
    `input_slice`, the input arrives whole and this rank multiplies its columns (a large layer on a
    replicated input, such as the modulation, is split this way)."""

    def __init__(self, local: nn.Module, group, input_slice: tuple[int, int] | None = None):
        super().__init__()
        self.group = group
        self.input_slice = input_slice
        bias = local.get("bias") if "bias" in local else None
        if bias is not None:
            local.pop("bias")
            self.bias = bias
        self.local = local

    def __call__(self, x: mx.array) -> mx.array:
        if self.input_slice is not None:
            x = x[..., self.input_slice[0]:self.input_slice[1]]
        y = mx.distributed.all_sum(self.local(x), group=self.group)
        return y + self["bias"] if "bias" in self else y


def connect(module: nn.Module, plan: TensorParallelPlan, group) -> None:
    """After quantization: every row-parallel layer adds up the ranks' partial products."""
    for path, layer in list(module.named_modules()):
        rule = plan.rule_for(path)
        if rule is not None and rule.sharding == ROW and not isinstance(layer, SummedShards):
            _replace(module, path, SummedShards(layer, group, _input_slice(layer, rule, group)))


def _input_slice(layer: nn.Module, rule: ShardRule, group) -> tuple[int, int] | None:
    if not rule.whole_input:
        return None
    if rule.parts is not None:
        raise ValueError(f"{rule.pattern}: a layer fed its whole input splits in one part")
    width = _local_input_width(layer)
    return group.rank() * width, (group.rank() + 1) * width


def _local_input_width(layer: nn.Module) -> int:
    """The input size of this rank's slice (a quantized layer packs 32 // bits values per uint32)."""
    width = layer.weight.shape[-1]
    return width * 32 // layer.bits if isinstance(layer, nn.QuantizedLinear) else width


def _replace(module: nn.Module, path: str, new: nn.Module) -> None:
    *parents, leaf = path.split(".")
    parent = module
    for part in parents:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    if isinstance(parent, list):
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)


def split_fraction(layer_path: str, plan: TensorParallelPlan | None) -> bool:
    """Whether the layer at `layer_path` is split across the ranks (the memory model divides its bytes)."""
    return plan is not None and plan.rule_for(layer_path) is not None
