"""The layers a plan can name and the bytes a transformer takes with them quantized.

A layer a plan can name is a Linear or Embedding the family's layer policy quantizes. Bytes are what
the engine holds once loaded: quantized layers' packed weights, scales and biases, plus what stays in
full precision as core/quant keeps it. They are computed by running the engine's own quantize_model
and cast_full_precision on a structure of lazy arrays, so they are exact without reading or
evaluating anything.
"""

from __future__ import annotations

from typing import Mapping

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..quant import GROUP_SIZES, SUPPORTED_BITS, LayerPolicy, QuantSpec, as_spec, quantized_weight_bytes
from .structure import CHECKPOINT_DTYPES

LOWEST_BITS = min(SUPPORTED_BITS)


def default_policy(transformer: nn.Module) -> LayerPolicy:
    """The layer policy of the family this transformer belongs to."""
    from ..pipelines import transformer_policy_for
    return transformer_policy_for(transformer)


def quantizable_layers(transformer: nn.Module, policy: LayerPolicy | None = None,
                       group_size: int | None = None) -> dict[str, int]:
    """{layer path: number of weights} for every layer the policy quantizes in groups of `group_size`
    (default: the policy's; a layer whose input size it does not divide stays in full precision), in module order."""
    policy = policy or default_policy(transformer)
    layers = {}
    for path, module in transformer.named_modules():
        if (isinstance(module, (nn.Linear, nn.Embedding))
                and policy.full_precision_reason(path, module, group_size) is None):
            layers[path] = int(module.weight.size)
    return dict(reversed(list(layers.items())))  # named_modules() walks backwards


def as_loaded_bytes(transformer: nn.Module, layers: Mapping[str, QuantSpec | int], dtype: mx.Dtype,
                    source_dtypes: Mapping[str, str] | None = None, policy: LayerPolicy | None = None) -> int:
    """The transformer's bytes once loaded by the engine with `layers` quantized (the others in full
    precision), computed from shapes and dtypes alone: the engine's own quantize_model and
    cast_full_precision run on a fresh structure of lazy arrays, and nothing is ever evaluated.

    `source_dtypes` ({parameter: safetensors dtype}, as LoadReport.source_dtypes) are the checkpoint's
    dtypes, which some full-precision layers keep; without them the transformer's own dtypes are used."""
    from ..quant import cast_full_precision, model_nbytes, quantize_model
    policy = policy or default_policy(transformer)
    shadow = type(transformer)(transformer.config)
    own = dict(tree_flatten(transformer.parameters()))
    source = {k: CHECKPOINT_DTYPES[v] for k, v in (source_dtypes or {}).items() if v in CHECKPOINT_DTYPES}
    shadow.update(tree_unflatten([(k, v.astype(source.get(k, own[k].dtype if k in own else v.dtype)))
                                  for k, v in tree_flatten(shadow.parameters())]))
    # Bytes depend on bits and group size alone: round-to-nearest stands in for every method here.
    quantize_model(shadow, {p: _rtn(s) for p, s in layers.items()}, policy, "transformer")
    cast_full_precision(shadow, dtype)
    return model_nbytes(shadow)


def _rtn(spec: QuantSpec | int) -> QuantSpec:
    spec = as_spec(spec)
    return QuantSpec(spec.bits, spec.group_size)


def fixed_bytes(transformer: nn.Module, dtype: mx.Dtype, source_dtypes: Mapping[str, str] | None = None,
                policy: LayerPolicy | None = None, group_size: int | None = None) -> int:
    """Bytes of everything that stays in full precision in the engine's quantized transformer
    (every layer quantizable in groups of `group_size` quantized): as_loaded_bytes less those layers' own bytes."""
    policy = policy or default_policy(transformer)
    group_size = group_size or policy.group_size
    sizes = quantizable_layers(transformer, policy, group_size)
    lowest = QuantSpec(LOWEST_BITS, group_size)
    return as_loaded_bytes(transformer, {p: lowest for p in sizes}, dtype, source_dtypes, policy) - sum(
        quantized_weight_bytes(n, lowest) for n in sizes.values())


def check_quantizable(sizes: Mapping[str, int], group_size: int) -> None:
    """Refuse a search or measurement in groups of `group_size` when no layer can be quantized in them."""
    if sizes:
        return
    from ..errors import InvalidRequest
    smaller = [g for g in GROUP_SIZES if g < group_size]
    if not smaller:
        raise InvalidRequest("this model's transformer has no layer that can be quantized")
    raise InvalidRequest(f"no layer of this model's transformer can be quantized in groups of {group_size} (no "
                         f"quantizable layer's input size is a multiple of it): use a smaller group, e.g. {smaller[0]}")


def average_bits(layers: Mapping[str, QuantSpec | int], sizes: Mapping[str, int]) -> float:
    """Nominal bits per quantized weight, weighted by each layer's weights (scales and biases not counted)."""
    total = sum(sizes[p] for p in layers)
    return sum(as_spec(spec).bits * sizes[p] for p, spec in layers.items()) / total if total else 0.0


def plan_bytes(layers: Mapping[str, QuantSpec | int], sizes: Mapping[str, int], fixed: int) -> int:
    """Transformer bytes of a plan naming every quantizable layer, given `fixed`, the bytes of what never
    quantizes (fixed_bytes). For a plan that leaves layers out, use as_loaded_bytes."""
    return fixed + sum(quantized_weight_bytes(sizes[p], as_spec(s)) for p, s in layers.items())
