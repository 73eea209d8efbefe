"""Quantizing a whole component in place, what it ends up holding, and materializing it layer by layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path

from ..errors import InvalidRequest
from ..generation import CancelToken, check_cancel
from .layers import quantize_layer
from .methods import LayerStats
from .policy import FULL, LayerPolicy, candidates, is_quantized
from .spec import DEFAULT_METHOD, UNQUANTIZED, QuantSpec, as_spec

# What quantize_model takes: None (leave it), one spec (or bits) for every layer, or {layer path: spec}.
Precision = QuantSpec | int | Mapping[str, QuantSpec | int] | None


@dataclass
class QuantizationReport:
    """Parameters by precision, after quantization."""

    component: str
    params: dict[str, int] = field(default_factory=dict)  # "4-bit" / "full precision (reason)" -> count
    layers: dict[str, QuantSpec] = field(default_factory=dict)  # path -> spec, quantized layers only
    kept: dict[str, str] = field(default_factory=dict)  # path -> why it stays in full precision
    nbytes: int = 0
    prequantized: bool = False  # loaded from a folder quantbench saved, not quantized on the fly
    calibration: dict | None = None  # how calibration statistics were gathered (prompts' hash...), if any

    def summary(self) -> str:
        total = sum(self.params.values()) or 1
        parts = [f"{label} {count / 1e6:.2f}M ({100 * count / total:.1f}%)"
                 for label, count in sorted(self.params.items(), key=lambda kv: -kv[1])]
        return f"{self.component}: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return {"component": self.component, "params": dict(self.params), "bytes": self.nbytes,
                "quantized_layers": len(self.layers), "prequantized": self.prequantized,
                "precision": self.bits_label}

    @property
    def bits_label(self) -> str:
        """'unquantized', '4-bit', '3-bit hqq g32', or 'mixed 3-8 bit' for a per-layer plan."""
        return precision_label(self.layers)


def precision_label(layers: Mapping[str, QuantSpec]) -> str:
    specs = sorted(set(layers.values()))
    if not specs:
        return UNQUANTIZED
    if len(specs) == 1:
        return specs[0].label
    bits = sorted({s.bits for s in specs})
    methods = {s.method for s in specs}
    label = f"{bits[0]}-bit" if len(bits) == 1 else f"mixed {bits[0]}-{bits[-1]} bit"
    if len(methods) == 1 and DEFAULT_METHOD not in methods:
        label += f" {methods.pop()}"
    return label


def layer_specs(model: nn.Module, precision: Precision, policy: LayerPolicy) -> tuple[dict[str, QuantSpec],
                                                                                      dict[str, str]]:
    """({path: spec} of the layers to quantize, {path: why kept}) for `precision` under `policy`."""
    decisions: dict[str, QuantSpec] = {}
    kept: dict[str, str] = {}
    for path, module in candidates(model):
        wanted = precision.get(path) if isinstance(precision, Mapping) else precision
        spec = None if wanted is None else as_spec(wanted)
        reason = "not quantized" if spec is None else policy.full_precision_reason(path, module, spec.group_size)
        if reason is None:
            decisions[path] = spec
        else:
            kept[path] = reason
    return decisions, kept


def quantize_model(model: nn.Module, precision: Precision, policy: LayerPolicy, component: str,
                   stats: Mapping[str, LayerStats] | None = None) -> QuantizationReport:
    """Quantize `model` in place: one spec (or bits) everywhere the policy allows, or a {layer path: spec}
    plan; None leaves it as is. `stats` are calibration statistics per layer path, for methods that
    need them. Lazy: weights are quantized when evaluated (see evaluate_in_units)."""
    if isinstance(precision, Mapping) and not precision:
        precision = None
    decisions, kept = layer_specs(model, precision, policy)
    stats = stats or {}

    def replace(path: str, module: nn.Module) -> nn.Module:
        return quantize_layer(module, decisions[path], stats.get(path)) if path in decisions else module

    if decisions:
        leaves = tree_map_with_path(replace, model.leaf_modules(), is_leaf=nn.Module.is_module)
        model.update_modules(leaves)
    return count_parameters(model, decisions, kept, component)


def count_parameters(model: nn.Module, layers: Mapping[str, QuantSpec], kept: Mapping[str, str],
                     component: str) -> QuantizationReport:
    """The report of a model quantized as `layers` says (others kept for the reasons in `kept`)."""
    report = QuantizationReport(component, layers=dict(layers), kept=dict(kept))
    for name, array in tree_flatten(model.parameters()):
        report.nbytes += array.nbytes
        layer, _, leaf = name.rpartition(".")
        spec = layers.get(layer)
        if spec is not None and leaf == "weight":
            label = spec.label
            report.params[label] = report.params.get(label, 0) + array.size * 32 // spec.bits
            continue
        if spec is not None and leaf in ("scales", "biases"):
            continue  # quantization metadata, counted in bytes, not in parameters
        if layer in kept and leaf == "weight":
            label = f"{FULL} ({kept[layer]})"
        else:
            label = f"{FULL} (norms, biases, other tensors)"
        report.params[label] = report.params.get(label, 0) + array.size
    return report


def cast_full_precision(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast floating parameters to the compute dtype, except quantized layers' scales and biases.

    In a quantized model, the Linear layers the policy kept in full precision keep the checkpoint's
    dtype (bfloat16 for real checkpoints) even when computing in float32 on the CPU: they are a small
    share of the compute, the matmul promotes them, and holding them in float32 would double their
    memory (3 percentage points of a 4-bit transformer's size relative to bf16).
    """
    quantized_model = is_quantized(model)
    for _, module in model.named_modules():
        quantized = isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        kept_linear = quantized_model and type(module) is nn.Linear
        updates = {name: value.astype(dtype) for name, value in module.items()
                   if isinstance(value, mx.array) and mx.issubdtype(value.dtype, mx.floating)
                   and not (quantized and name in ("scales", "biases"))
                   and not (kept_linear and name == "weight")}
        if updates:
            module.update(updates)


def evaluate_in_units(model: nn.Module, cancel: CancelToken | None = None) -> None:
    """Materialize the parameters one layer at a time (streamed loading).

    Weights come from `mx.load` lazily and quantization is lazy too, so evaluating one layer reads
    only that layer's checkpoint tensors, quantizes them and lets the full-precision copies go.
    Evaluating the whole model at once would let MLX read everything before freeing anything: the
    load peak would be the full-precision model instead of the quantized one plus one layer.
    `cancel` is checked before each layer (a layer is read and quantized in well under a second, and the
    check costs an Event's flag): a load stops with Cancelled soon after it is asked to.
    """
    for _, module in model.named_modules():
        if not module.children():
            check_cancel(cancel)
            mx.eval(module.parameters())
    mx.eval(model.parameters())


def model_nbytes(model: nn.Module) -> int:
    return sum(a.nbytes for _, a in tree_flatten(model.parameters()))


def require_full_precision(model: nn.Module, what: str = "the lab") -> None:
    if is_quantized(model):
        raise InvalidRequest(f"{what} needs the full-precision transformer, and this one is already quantized "
                             "(load the original model, without --quantize)")

