"""Quantization methods: each one turns a float weight into MLX's affine layout.

A method is one file in this folder that defines `METHOD = Method(...)`; it is found by its file
name, nothing else needs to change. Its `quantize(weight, bits, group_size, stats)` takes

- `weight`: the float weight (out, in) of a Linear (an Embedding's table is (rows, dim)), already
  rounded to bfloat16 as the engine stores weights before quantizing;
- `bits` (2, 3, 4, 5, 6 or 8) and `group_size` (32, 64 or 128, dividing `in`);
- `stats`: what calibration gathered about the layer's inputs (LayerStats), or None;

and returns a QuantizedWeight: the `mx.quantize` layout (packed uint32 weights (out, in*bits/32),
bfloat16 scales and biases (out, in/group_size)), so that w ~ scale * code + bias per group and the
result loads and runs as a plain `nn.QuantizedLinear`. A method with `needs_calibration` is refused
(one line) where no statistics are given. `core/quant/affine.py` has the shared arithmetic (groups,
codes, least-squares fits, packing).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import mlx.core as mx

from ...errors import InvalidRequest


class QuantizedWeight(NamedTuple):
    weight: mx.array  # packed codes, uint32 (out, in * bits / 32)
    scales: mx.array  # bfloat16 (out, in / group_size)
    biases: mx.array  # bfloat16 (out, in / group_size)


@dataclass
class LayerStats:
    """What calibration gathered about one layer's inputs x (rows of `in` features).

    Calibration hands the layers of one site (those reading the same input: q, k and v) one LayerStats and
    quantizes them one after the other. With `disposable`, nothing else needs X^T X afterwards: a method may
    keep what it derives from it in `derived` for the site's other layers and let X^T X itself go
    (`release`), so that few (in, in) matrices exist at once."""

    xtx: mx.array | None  # (in, in) float32: the sum of x^T x over every calibration token
    tokens: int  # how many rows were summed
    disposable: bool = False
    derived: dict = field(default_factory=dict)
    _diagonal: mx.array | None = None

    def diagonal(self) -> mx.array:
        """diag(X^T X) in float32 (kept after X^T X is released)."""
        if self._diagonal is None:
            self._diagonal = mx.diagonal(self.xtx).astype(mx.float32)
            mx.eval(self._diagonal)
        return self._diagonal

    def release(self) -> None:
        """Let X^T X go, if nothing else needs it (see `disposable`)."""
        if self.disposable:
            self.diagonal()
            self.xtx = None


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line for --help and the README
    quantize: Callable[[mx.array, int, int, "LayerStats | None"], QuantizedWeight]
    needs_calibration: bool = False


@functools.cache
def all_methods() -> dict[str, Method]:
    """{name: Method} for every file in this folder that defines METHOD, round-to-nearest first."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: (i.name != "rtn", i.name)):
        method = getattr(importlib.import_module(f"{__name__}.{info.name}"), "METHOD", None)
        if isinstance(method, Method):
            found[method.name] = method
    return found


def method_names() -> tuple[str, ...]:
    return tuple(all_methods())


def get_method(name: str) -> Method:
    method = all_methods().get(name)
    if method is None:
        raise InvalidRequest(f"unknown quantization method '{name}': choose {', '.join(method_names())}")
    return method
