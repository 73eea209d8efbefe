"""On-the-fly affine group quantization with an explicit layer policy.

Which layers are quantized is decided by a `LayerPolicy`, in this order:
1. only Linear and Embedding layers are candidates (norms, biases, batch-norm statistics and
   other loose tensors always stay in full precision);
2. layers whose path matches one of the family's `keep` patterns stay in full precision (small
   layers whose error feeds every token: the latent input and output projections, the first
   timestep layer; GGUF and SVDQuant also keep such layers in 16 bits);
3. weights whose input dimension is not a multiple of the group size, or with fewer than
   `min_elements` elements, stay in full precision.
Everything else gets `bits` (uniform) or the bits a per-layer plan gives it (mixed precision).

Scales and biases are stored in bfloat16 whatever the compute dtype, so a quantized weight costs
b + 32/64 bits (3.5, 4.5, 5.5, 6.5, 8.5), the figure users know from MLX on Apple silicon.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from functools import cache
from typing import Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import InvalidRequest

SUPPORTED_BITS = (3, 4, 5, 6, 8)
GROUP_SIZE = 64
SCALE_DTYPE = mx.bfloat16
FULL = "full precision"


@dataclass(frozen=True)
class KeepRule:
    pattern: str  # full-match regex over the layer path
    reason: str


@dataclass(frozen=True)
class LayerPolicy:
    keep: tuple[KeepRule, ...] = ()
    group_size: int = GROUP_SIZE
    min_elements: int = 4096

    def full_precision_reason(self, path: str, module: nn.Module) -> str | None:
        """Why this Linear/Embedding layer stays in full precision, or None to quantize it."""
        for rule in self.keep:
            if re.fullmatch(rule.pattern, path):
                return rule.reason
        weight = module.weight
        if weight.shape[-1] % self.group_size:
            return f"input size not a multiple of {self.group_size}"
        if weight.size < self.min_elements:
            return f"fewer than {self.min_elements} weights"
        return None


def parse_bits(value: str | int | None) -> int | None:
    """'bf16', 'none', '' or None -> None (no quantization); '4' -> 4; anything else is refused."""
    if value is None or str(value).lower() in ("", "none", "bf16", "16", "full"):
        return None
    try:
        bits = int(value)
    except ValueError:
        bits = -1
    if bits not in SUPPORTED_BITS:
        raise InvalidRequest(f"unsupported quantization '{value}': choose one of "
                             f"{', '.join(map(str, SUPPORTED_BITS))} bits (or bf16 for none)")
    return bits


@dataclass
class QuantizationReport:
    """Parameters by precision, after quantization."""

    component: str
    params: dict[str, int] = field(default_factory=dict)  # "4-bit" / "full precision (reason)" -> count
    layers: dict[str, int] = field(default_factory=dict)  # path -> bits, quantized layers only
    kept: dict[str, str] = field(default_factory=dict)  # path -> why it stays in full precision
    nbytes: int = 0
    prequantized: bool = False  # loaded from a folder quantbench saved, not quantized on the fly

    def summary(self) -> str:
        total = sum(self.params.values()) or 1
        parts = [f"{label} {count / 1e6:.2f}M ({100 * count / total:.1f}%)"
                 for label, count in sorted(self.params.items(), key=lambda kv: -kv[1])]
        return f"{self.component}: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return {"component": self.component, "params": dict(self.params), "bytes": self.nbytes,
                "quantized_layers": len(self.layers), "prequantized": self.prequantized}

    @property
    def bits_label(self) -> str:
        """'bf16', '4-bit', or 'mixed 3-8 bit' for a per-layer plan."""
        values = sorted(set(self.layers.values()))
        if not values:
            return "bf16"
        return f"{values[0]}-bit" if len(values) == 1 else f"mixed {values[0]}-{values[-1]} bit"


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(path, m) for path, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]


def quantize_model(model: nn.Module, bits: int | Mapping[str, int] | None, policy: LayerPolicy,
                   component: str) -> QuantizationReport:
    """Quantize `model` in place: uniform `bits`, or a {layer path: bits} plan; None leaves it as is."""
    report = QuantizationReport(component)
    decisions: dict[str, int] = {}
    kept: dict[str, str] = {}
    for path, module in _candidates(model):
        layer_bits = bits.get(path) if isinstance(bits, Mapping) else bits
        reason = "not quantized" if layer_bits is None else policy.full_precision_reason(path, module)
        if reason is None:
            if layer_bits not in SUPPORTED_BITS:
                raise InvalidRequest(f"layer {path}: unsupported bits {layer_bits}")
            decisions[path] = layer_bits
        else:
            kept[path] = reason
    for path in decisions:
        module = module_at(model, path)
        module.weight = module.weight.astype(SCALE_DTYPE)
    if decisions:
        nn.quantize(model, group_size=policy.group_size, mode="affine",
                    class_predicate=lambda path, m: ({"group_size": policy.group_size, "bits": decisions[path]}
                                                     if path in decisions else False))
    _count(model, decisions, kept, report)
    return report


# A dequantized slice of a weight: small enough to stay in the CPU's cache between the dequantization
# and its matmul, and to come from malloc's reused heap instead of fresh, page-faulted memory
# (glibc serves allocations over 32 MB with mmap, and MLX's CPU allocator keeps no cache).
DENSE_SLICE_BYTES = 4 << 20


class DenseQuantizedLinear(nn.QuantizedLinear):
    """A quantized Linear that dequantizes its weight and runs dense matmuls.

    On MLX's CPU backend the quantized matmul kernel does not use BLAS (a few GFLOP/s); dequantizing
    the weight and calling the BLAS matmul is tens of times faster. The weight is dequantized a slice
    of output rows at a time, each slice multiplied as soon as it exists: the weights stay quantized
    in memory, the dense copy in flight is one slice (DENSE_SLICE_BYTES), and every output element is
    the same dot product as with the whole weight (to float32 rounding at a slice's edge).
    """

    def __call__(self, x: mx.array) -> mx.array:
        rows = self.weight.shape[0]
        step = max(1, DENSE_SLICE_BYTES // (x.dtype.size * self.weight.shape[1] * 32 // self.bits))
        parts = [x @ dequantize_rows(self, start, min(start + step, rows), x.dtype).T
                 for start in range(0, rows, step)]
        y = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)
        return y + self["bias"] if "bias" in self else y


def dequantize_weight(layer: nn.QuantizedLinear, dtype: mx.Dtype) -> mx.array:
    """The layer's whole weight in `dtype`."""
    return dequantize_rows(layer, 0, layer.weight.shape[0], dtype)


def dequantize_rows(layer: nn.QuantizedLinear, start: int, stop: int, dtype: mx.Dtype) -> mx.array:
    """Output rows [start, stop) of the layer's weight in `dtype`, exactly as mx.dequantize computes them.

    For 4 and 8 bits the packed words are read as bytes (element order is the bytes' order on a
    little-endian machine), which keeps every step a contiguous elementwise op that mx.compile fuses
    into one pass: several times faster than MLX's CPU dequantize kernel. Other widths straddle bytes.
    """
    packed, scales, biases = (layer[name][start:stop] for name in ("weight", "scales", "biases"))
    if layer.bits not in (4, 8) or layer.mode != "affine" or not _LITTLE_ENDIAN:
        # Scales cast first: with bfloat16 scales MLX rounds the result in bfloat16 whatever `dtype` says.
        return mx.dequantize(packed, scales.astype(dtype), biases.astype(dtype),
                             group_size=layer.group_size, bits=layer.bits, mode=layer.mode)
    levels = mx.view(packed, mx.uint8)
    if layer.bits == 4:
        levels = mx.view(_nibbles_to_bytes(levels), mx.uint8)
    return _affine_for(layer.group_size, dtype)(levels, scales, biases)


_LITTLE_ENDIAN = sys.byteorder == "little"


@mx.compile
def _nibbles_to_bytes(packed: mx.array) -> mx.array:
    """Each byte's two 4-bit levels spread into the two bytes of a uint16 (low nibble first)."""
    wide = packed.astype(mx.uint16)
    return (wide & 15) | ((wide >> 4) << 8)


@cache
def _affine_for(group_size: int, dtype: mx.Dtype):
    """levels * scale + bias per group, compiled into one pass (one compiled function per dtype)."""
    def affine(levels: mx.array, scales: mx.array, biases: mx.array) -> mx.array:
        rows = levels.shape[0]
        grouped = levels.reshape(rows, -1, group_size).astype(dtype)
        weight = grouped * scales.astype(dtype)[..., None] + biases.astype(dtype)[..., None]
        return weight.reshape(rows, -1)
    return mx.compile(affine)


def quantized_matmul_kind(kind: str = "auto") -> str:
    """'dense' (dequantize, then BLAS matmul) on the CPU backend, MLX's 'native' kernel elsewhere."""
    if kind not in ("auto", "dense", "native"):
        raise InvalidRequest(f"unknown quantized matmul '{kind}': choose auto, dense or native")
    if kind == "auto":
        return "dense" if mx.default_device() == mx.cpu else "native"
    return kind


def use_dense_matmul(model: nn.Module) -> int:
    """Switch every QuantizedLinear in `model` to DenseQuantizedLinear (same parameters); returns the count."""
    switched = 0
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = DenseQuantizedLinear
            switched += 1
    return switched


def quantize_structure(model: nn.Module, layers: Mapping[str, int], group_size: int = GROUP_SIZE) -> None:
    """Turn the named layers into quantized layers without caring about their values: the next step
    loads already-quantized weights, scales and biases into them."""
    nn.quantize(model, group_size=group_size, mode="affine",
                class_predicate=lambda path, m: ({"group_size": group_size, "bits": layers[path]}
                                                 if path in layers else False))


def count_parameters(model: nn.Module, layers: Mapping[str, int], kept: Mapping[str, str],
                     component: str) -> QuantizationReport:
    report = QuantizationReport(component)
    _count(model, dict(layers), dict(kept), report)
    return report


def module_at(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path such as 'transformer_blocks.3.attn.to_q' ('' is the model itself)."""
    module = model
    if not path:
        return module
    for part in path.split("."):
        module = module[int(part)] if isinstance(module, list) else module[part]
    return module


def _count(model: nn.Module, decisions: dict[str, int], kept: dict[str, str], report: QuantizationReport) -> None:
    for name, array in tree_flatten(model.parameters()):
        report.nbytes += array.nbytes
        layer, _, leaf = name.rpartition(".")
        if layer in decisions and leaf == "weight":
            count = array.size * 32 // decisions[layer]
            report.params[f"{decisions[layer]}-bit"] = report.params.get(f"{decisions[layer]}-bit", 0) + count
            continue
        if layer in decisions and leaf in ("scales", "biases"):
            continue  # quantization metadata, counted in bytes, not in parameters
        if layer in kept and leaf == "weight":
            label = f"{FULL} ({kept[layer]})"
        else:
            label = f"{FULL} (norms, biases, other tensors)"
        report.params[label] = report.params.get(label, 0) + array.size
    report.layers = dict(decisions)
    report.kept = dict(kept)


def cast_full_precision(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast floating parameters to the compute dtype, except quantized layers' scales and biases.

    In a quantized model, the Linear layers the policy kept in full precision keep the checkpoint's
    dtype (bfloat16 for real checkpoints) even when computing in float32 on the CPU: they are a small
    share of the compute, the matmul promotes them, and holding them in float32 would double their
    memory (3 percentage points of a 4-bit transformer's size relative to bf16).
    """
    quantized_model = any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())
    for _, module in model.named_modules():
        quantized = isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        kept_linear = quantized_model and type(module) is nn.Linear
        updates = {name: value.astype(dtype) for name, value in module.items()
                   if isinstance(value, mx.array) and mx.issubdtype(value.dtype, mx.floating)
                   and not (quantized and name in ("scales", "biases"))
                   and not (kept_linear and name == "weight")}
        if updates:
            module.update(updates)


def evaluate_in_units(model: nn.Module) -> None:
    """Materialize the parameters one layer at a time (streamed loading).

    Weights come from `mx.load` lazily and quantization is lazy too, so evaluating one layer reads
    only that layer's checkpoint tensors, quantizes them and lets the full-precision copies go.
    Evaluating the whole model at once would let MLX read everything before freeing anything: the
    load peak would be the full-precision model instead of the quantized one plus one layer.
    """
    for _, module in model.named_modules():
        if not module.children():
            mx.eval(module.parameters())
    mx.eval(model.parameters())


def model_nbytes(model: nn.Module) -> int:
    return sum(a.nbytes for _, a in tree_flatten(model.parameters()))
