"""Activation-aware scaling (AWQ, Lin et al., 2023), only where it folds exactly into the previous layer.

A layer's rounding error matters in proportion to the inputs it multiplies: scaling input channel j of a
weight up by s_j (and the input down by the same factor) gives the channels that carry large
activations finer steps of the grid. The inverse scale must go somewhere: here only into a previous
layer whose output channel j reaches this input channel j through operations that are linear per
channel, so the model computes exactly the same function in full precision. In a FLUX.2 block these
are the value projections feeding the attention output projections (attention mixes values linearly),
and the value half of the SwiGLU input projection feeding the feed-forward output. The inputs of the
other layers come from the timestep-dependent adaLN modulation, which does not fold.

The scale is s = a^alpha with a_j the root-mean-square of input channel j over the calibration inputs;
alpha in [0, 1] (0: no scaling) is chosen per fold to minimise the consumers' output error
tr((W - Q(W diag s) diag(1/s)) H (...)^T) with round-to-nearest Q.

The scaling and folding happen during calibration (core/quant/calibration.py), which hands this method
the already scaled consumer weights; the rounding itself is round-to-nearest. Layers that are not the
consumer of a fold are simply rounded to nearest.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import LayerStats, Method, QuantizedWeight, get_method
from .gptq import output_error

ALPHAS = 11  # alpha = 0, 0.1, ..., 1


def activation_scales(weights: list[list[mx.array]], xtxs: list[mx.array], tokens: int, bits: int,
                      group_size: int) -> mx.array:
    """The per-channel scale s (in,) for consumers sharing input channels: `weights[i]` are the layers
    reading the input whose X^T X is `xtxs[i]`; alpha = 0 (s = 1) is among the candidates."""
    mean_square = sum(mx.diagonal(x).astype(mx.float32) for x in xtxs) / max(tokens, 1)
    magnitude = mx.maximum(mx.sqrt(mean_square), 1e-8)
    best, best_error = mx.ones_like(magnitude), None
    for alpha in np.linspace(0.0, 1.0, ALPHAS).tolist():
        scales = magnitude ** alpha
        scales = scales / mx.sqrt(scales.max() * scales.min())
        error = 0.0
        for layers, xtx in zip(weights, xtxs):
            for weight in layers:
                packed, q_scales, q_biases = get_method("rtn").quantize(weight * scales[None, :], bits, group_size)
                rounded = mx.dequantize(packed, q_scales.astype(mx.float32), q_biases.astype(mx.float32),
                                        group_size=group_size, bits=bits)
                error += output_error(weight, rounded / scales[None, :], xtx)
        if best_error is None or error < best_error:
            best, best_error = scales, error
    return best


def fold_rows(layer: nn.Module, segments: tuple[tuple[int, int, int], ...], scales: mx.array) -> None:
    """Divide a Linear's output rows (a quantized one's per-row scales and biases) by `scales`: each segment
    (first scale index, first row, count) maps scales[first scale index:][:count] onto those rows."""
    divisor = np.ones(layer.weight.shape[0], np.float32)
    values = np.array(scales, dtype=np.float32)
    for column, row, count in segments:
        divisor[row:row + count] = values[column:column + count]
    divisor = mx.array(divisor)[:, None]
    if isinstance(layer, nn.QuantizedLinear):
        layer.scales = (layer.scales.astype(mx.float32) / divisor).astype(layer.scales.dtype)
        layer.biases = (layer.biases.astype(mx.float32) / divisor).astype(layer.biases.dtype)
    else:
        layer.weight = (layer.weight.astype(mx.float32) / divisor).astype(layer.weight.dtype)
    if "bias" in layer:
        layer.bias = (layer.bias.astype(mx.float32) / divisor[:, 0]).astype(layer.bias.dtype)


def quantize(weight: mx.array, bits: int, group_size: int, stats: LayerStats | None = None) -> QuantizedWeight:
    return get_method("rtn").quantize(weight, bits, group_size, stats)


METHOD = Method("awq", "activation-aware channel scales, only where they fold exactly into the previous layer, "
                       "then round to nearest (calibration)", quantize, needs_calibration=True)


def fold_exactly(transformer: nn.Module, specs: dict, fold, step: list[list[str]], stats: list) -> None:
    """AWQ where it is exact, during calibration's block stage: scale the consumers' input columns by s and
    the producers' matching output rows by 1/s (s chosen on the consumers' statistics, `stats` the step's
    sites' InputStats), and rescale those statistics."""
    from ..layers import module_at
    consumers, producers = fold
    chosen = [(site, st) for site, st in zip(step, stats)
              if site[0] in consumers and st is not None and specs[site[0]].method == "awq"]
    if not chosen:
        return
    spec = specs[chosen[0][0][0]]
    weights = [[module_at(transformer, p).weight.astype(mx.float32) for p in site] for site, _ in chosen]
    scales = activation_scales(weights, [st.xtx for _, st in chosen], sum(st.tokens for _, st in chosen),
                               spec.bits, spec.group_size)
    for site, st in chosen:
        for path in site:
            layer = module_at(transformer, path)
            layer.weight = (layer.weight.astype(mx.float32) * scales[None, :]).astype(layer.weight.dtype)
        st.xtx = st.xtx / (scales[:, None] * scales[None, :])
    for path, segments in producers:
        fold_rows(module_at(transformer, path), segments, scales)
        mx.eval(module_at(transformer, path).parameters())
