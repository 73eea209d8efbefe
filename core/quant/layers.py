"""Quantizing one layer: the primitive everything else (a model, the lab's copies, a saved model) uses.

The weight is rounded to bfloat16 first (real checkpoints are bf16, and the lab's in-memory copies must
give what a load from disk gives), then the spec's method turns it into MLX's affine layout. The result
is a plain `nn.QuantizedLinear` / `nn.QuantizedEmbedding`.
"""

from __future__ import annotations

from typing import Mapping

import mlx.core as mx
import mlx.nn as nn

from ..errors import InvalidRequest
from .cost import SCALE_DTYPE
from .methods import LayerStats, QuantizedWeight, get_method
from .spec import QuantSpec, as_spec


def quantize_weight(weight: mx.array, spec: QuantSpec, stats: LayerStats | None = None) -> QuantizedWeight:
    """The weight (out, in) in MLX's affine layout at `spec` (lazy: nothing is evaluated here)."""
    method = get_method(spec.method)
    if method.needs_calibration and stats is None:
        raise InvalidRequest(f"'{spec}' needs calibration statistics ({method.name} learns from the layer's inputs)")
    packed, scales, biases = method.quantize(weight.astype(SCALE_DTYPE), spec.bits, spec.group_size, stats)
    return QuantizedWeight(packed, scales.astype(SCALE_DTYPE), biases.astype(SCALE_DTYPE))


def quantize_layer(module: nn.Module, spec: QuantSpec | int, stats: LayerStats | None = None) -> nn.Module:
    """A quantized Linear or Embedding made from `module` (which is left unchanged)."""
    spec = as_spec(spec)
    packed, scales, biases = quantize_weight(module.weight, spec, stats)
    if isinstance(module, nn.Linear):
        out_dims, in_dims = module.weight.shape
        layer = nn.QuantizedLinear(in_dims, out_dims, "bias" in module, spec.group_size, spec.bits)
        if "bias" in module:
            layer.bias = module.bias
    elif isinstance(module, nn.Embedding):
        layer = nn.QuantizedEmbedding(*module.weight.shape, spec.group_size, spec.bits)
    else:
        raise InvalidRequest(f"cannot quantize a {type(module).__name__}")
    # The constructor's own random weights are lazy and never evaluated: replaced here.
    layer.weight, layer.scales, layer.biases = packed, scales, biases
    layer.freeze()
    return layer


def quantized_copy(module: nn.Module, spec: QuantSpec | int, dense: bool = False,
                   stats: LayerStats | None = None) -> nn.Module:
    """The layer as quantize_model would leave it, evaluated, for swapping into a running model."""
    from .dense import DenseQuantizedLinear
    layer = quantize_layer(module, spec, stats)
    if dense and type(layer) is nn.QuantizedLinear:
        layer.__class__ = DenseQuantizedLinear
    mx.eval(layer.parameters())
    return layer


def quantize_structure(model: nn.Module, layers: Mapping[str, QuantSpec]) -> list[str]:
    """Turn the named layers into quantized layers of the right shapes without caring about their values:
    the next step loads already-quantized weights, scales and biases into them. Returns the names that are no
    quantizable layer of `model` (left as they are)."""
    specs = {path: as_spec(spec) for path, spec in layers.items()}
    found = set()

    def predicate(path: str, module: nn.Module):
        if path not in specs:
            return False
        found.add(path)
        return {"group_size": specs[path].group_size, "bits": specs[path].bits, "mode": "affine"}

    nn.quantize(model, class_predicate=predicate)
    return sorted(set(specs) - found)


def module_at(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path such as 'transformer_blocks.3.attn.to_q' ('' is the model itself)."""
    module = model
    if not path:
        return module
    for part in path.split("."):
        module = module[int(part)] if isinstance(module, list) else module[part]
    return module


def parent_and_module(model: nn.Module, path: str) -> tuple[object, str, nn.Module]:
    """(parent, key, module) for a dotted path such as 'transformer_blocks.3.attn.to_q'."""
    parent_path, _, key = path.rpartition(".")
    parent = module_at(model, parent_path)
    module = parent[int(key)] if isinstance(parent, list) else parent[key]
    return parent, key, module


def set_module(parent, key: str, module: nn.Module) -> None:
    if isinstance(parent, list):
        parent[int(key)] = module
    else:
        setattr(parent, key, module)


def replace_layer(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put `module` at `path` in `model`; returns the module that was there."""
    parent, key, old = parent_and_module(model, path)
    set_module(parent, key, module)
    return old
