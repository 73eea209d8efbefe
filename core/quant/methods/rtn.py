"""Round-to-nearest: each group's codes span its min to max (MLX's own `mx.quantize`)."""

from __future__ import annotations

import mlx.core as mx

from . import LayerStats, Method, QuantizedWeight


def quantize(weight: mx.array, bits: int, group_size: int, stats: LayerStats | None = None) -> QuantizedWeight:
    return QuantizedWeight(*mx.quantize(weight, group_size=group_size, bits=bits, mode="affine"))


METHOD = Method("rtn", "round to nearest between each group's min and max (what mlx-lm and mflux do)", quantize)
