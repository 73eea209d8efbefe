"""Where a denoising step's time goes: matmul, dequantization, attention, norms, RoPE and the rest
(elementwise work: modulation, gates, residuals, activations, reshapes), per block type.

MLX is lazy, so a split needs every timed region evaluated on its own: while profiling, each
transformer block, each Linear layer, each weight dequantization, each attention call and each
`mx.fast` kernel call evaluates its inputs first (charging pending work to whoever made it) and its
output last. On the CPU backend ops run one after another anyway, so the split's total is close to
the plain step's. The compiled (fused) functions (RoPE, modulation, activations) hold no timed
region, so they stay compiled and count as elementwise work, as fast as in a plain step. Where the CPU's
tile kernel runs the quantized products (quant/tile_kernel.py), their dequantization is inside the product and
counts as matmul: "dequantize" is the slices' alone. The CPU's C kernels count as what they do: the attention
kernel as attention, the elementwise kernel's activations as elementwise work and its per-head norms (with the
rotary embedding they apply in the same pass) as norm.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from .blocks import attention as attention_module, attention_kernel, elementwise_kernel
from .quant import dense

CATEGORIES = ("matmul", "dequantize", "attention", "norm", "rope", "elementwise")
OUTSIDE = "outside blocks"  # embedders, modulation, the final norm and projection


@dataclass
class StepProfile:
    """Seconds per category for each block type (summed over the blocks of that type)."""

    seconds: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    blocks: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: float = 0.0

    def reset(self) -> None:
        self.seconds.clear()
        self.blocks.clear()
        self.total = 0.0

    def by_category(self) -> dict[str, float]:
        return {c: sum(row.get(c, 0.0) for row in self.seconds.values()) for c in CATEGORIES}

    def to_dict(self) -> dict:
        return {"total_seconds": self.total, "by_category": self.by_category(),
                "by_block": {name: {"blocks": self.blocks.get(name, 0), **{c: row.get(c, 0.0) for c in CATEGORIES}}
                             for name, row in self.seconds.items()}}

    def table(self) -> list[str]:
        """Seconds and share of the row's time, per category; one row per block type and one for the step."""
        lines = [f"{'block type':<24}{'n':>4}" + "".join(f"{c:>17}" for c in CATEGORIES) + f"{'total':>10}"]
        for name, row in list(self.seconds.items()) + [("whole step", self.by_category())]:
            total = sum(row.get(c, 0.0) for c in CATEGORIES) or 1.0
            cells = "".join(f"{f'{row.get(c, 0.0):.2f}s {100 * row.get(c, 0.0) / total:3.0f}%':>17}" for c in CATEGORIES)
            lines.append(f"{name:<24}{self.blocks.get(name, '')!s:>4}{cells}{total:>9.2f}s")
        return lines


class _Timer:
    """Nested timed regions; each region's time minus its children's goes to its own category."""

    def __init__(self, profile: StepProfile):
        self.profile = profile
        self.block = OUTSIDE
        self.stack: list[list[float]] = []  # per open region: [children seconds]

    def region(self, category: str, run: Callable, args: tuple, kwargs: dict, block: str | None = None):
        mx.eval(_arrays(args), _arrays(kwargs))  # pending work belongs to the caller
        outer_block = self.block
        if block is not None:
            self.block = block
            self.profile.blocks[block] += 1
        self.stack.append([0.0])
        started = time.perf_counter()
        try:
            out = run(*args, **kwargs)
            mx.eval(_arrays(out))
        finally:
            elapsed = time.perf_counter() - started
            children = self.stack.pop()[0]
            self.profile.seconds[self.block][category] += elapsed - children
            if self.stack:
                self.stack[-1][0] += elapsed
            self.block = outer_block
        return out


def _arrays(tree) -> list[mx.array]:
    if isinstance(tree, mx.array):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [a for item in tree for a in _arrays(item)]
    if isinstance(tree, dict):
        return [a for item in tree.values() for a in _arrays(item)]
    return []


_FAST = {"scaled_dot_product_attention": "attention", "layer_norm": "norm", "rms_norm": "norm", "rope": "rope"}
_NORMS = (nn.RMSNorm, nn.LayerNorm, nn.GroupNorm)
_LINEARS = (nn.Linear, nn.QuantizedLinear)


@contextmanager
def profiling(transformer: nn.Module):
    """Profile every call of `transformer` made inside the block; yields the StepProfile being filled.

    Blocks are the modules in the transformer's top-level lists (transformer_blocks,
    single_transformer_blocks, ...); everything else is charged to "outside blocks"."""
    profile = StepProfile()
    timer = _Timer(profile)
    swapped: list[tuple[nn.Module, type]] = []

    def timed_class(module: nn.Module, category: str, block: bool) -> None:
        cls = type(module)

        def __call__(self, *args, **kwargs):
            return timer.region(category, lambda *a, **k: cls.__call__(self, *a, **k), args, kwargs,
                                block=cls.__name__ if block else None)

        module.__class__ = type(cls.__name__, (cls,), {"__call__": __call__})
        swapped.append((module, cls))

    for name, child in transformer.children().items():
        if isinstance(child, list) and child and all(isinstance(m, nn.Module) for m in child):
            for block in child:
                timed_class(block, "elementwise", block=True)
    for _, module in transformer.named_modules():
        if isinstance(module, _LINEARS):
            timed_class(module, "matmul", block=False)
        elif isinstance(module, _NORMS):
            timed_class(module, "norm", block=False)

    originals = {name: getattr(mx.fast, name) for name in _FAST}
    inside = [False]  # mx.fast calls are timed only inside the transformer (not the text encoder or VAE)
    for name, category in _FAST.items():
        setattr(mx.fast, name, lambda *a, _f=originals[name], _c=category, **k:
                timer.region(_c, _f, a, k) if inside[0] else _f(*a, **k))
    dequantize_rows = dense.dequantize_rows
    dense.dequantize_rows = lambda *a, **k: timer.region("dequantize", dequantize_rows, a, k)
    kernels = [(attention_module, "scaled_dot_product_attention", "attention"), (attention_kernel, "attend", "attention"),
               (elementwise_kernel, "activation", "elementwise"), (elementwise_kernel, "norm_rope", "norm")]
    kept = [getattr(module, name) for module, name, _ in kernels]
    for (module, name, category), function in zip(kernels, kept):
        setattr(module, name, lambda *a, _f=function, _c=category, **k: timer.region(_c, _f, a, k))
    outer_call = type(transformer).__call__

    def whole(self, *args, **kwargs):  # each call (one step) starts the profile afresh: the last one is kept
        profile.reset()
        inside[0] = True
        started = time.perf_counter()
        try:
            return timer.region("elementwise", lambda *a, **k: outer_call(self, *a, **k), args, kwargs)
        finally:
            profile.total += time.perf_counter() - started
            inside[0] = False

    transformer.__class__ = type(type(transformer).__name__, (type(transformer),), {"__call__": whole})
    swapped.append((transformer, type(transformer).__bases__[0]))
    try:
        yield profile
    finally:
        dense.dequantize_rows = dequantize_rows
        for (module, name, _), function in zip(kernels, kept):
            setattr(module, name, function)
        for name, original in originals.items():
            setattr(mx.fast, name, original)
        for module, cls in reversed(swapped):
            module.__class__ = cls
