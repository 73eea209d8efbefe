"""What a quantized weight costs in memory, exactly as MLX stores it.

Per group of `group_size` weights: the packed codes (bits each) plus one bfloat16 scale and one
bfloat16 bias. Bits per weight = bits + 32 / group_size: 4.5 at 4 bits in groups of 64, 5 in groups
of 32, 4.25 in groups of 128.
"""

from __future__ import annotations

import mlx.core as mx

from .spec import QuantSpec

SCALE_DTYPE = mx.bfloat16
SCALE_BYTES = 2


def quantized_weight_bytes(elements: int, spec: QuantSpec) -> int:
    """Bytes of `elements` weights quantized at `spec`: packed codes plus a scale and a bias per group."""
    return elements * spec.bits // 8 + (elements // spec.group_size) * 2 * SCALE_BYTES


def bits_per_weight(spec: QuantSpec) -> float:
    """Stored bits per weight, scales and biases included (4.5 for 4 bits in groups of 64)."""
    return spec.bits + 2 * SCALE_BYTES * 8 / spec.group_size


def overhead_bits(group_size: int) -> float:
    """The bits per weight a group's scale and bias add (0.5 for groups of 64)."""
    return 2 * SCALE_BYTES * 8 / group_size
