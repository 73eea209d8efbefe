"""X^T X summed so that the result does not depend on how the calls were split across ranks.

Floating-point addition is not associative: adding the same products in another order (one rank's
calls, then the other's) changes the last bits, and GPTQ and AWQ would then make other weights on
another number of ranks. So each product (one call, or one replayed batch of one prompt's calls: its
rows do not depend on the split) is rounded onto a grid of its own, a power of two GRID_BITS below its
largest entry, and added as int64 on the finest grid any product used. Integer addition is exact, so
any order, on any number of ranks, gives the same integers. The ranks then agree on the finest grid
(the smallest exponent, gathered), shift their sums onto it (exact) and add them with
`mx.distributed.all_sum` of int64; one float32 rounding at the end. One process takes the same path
without the collectives, so one rank and N ranks give the same bits.

The rows of X^T X are summed in blocks of ROW_BLOCK rows, each with its own grid (a few large input
channels do not cost the others their precision) and computed one block at a time, so the float32
product in flight is (ROW_BLOCK, in), not (in, in); the running sum is int64: twice the bytes of a
float32 X^T X. Rounding at 2^-32 of the largest entry is far below float32's own rounding (2^-24).
"""

from __future__ import annotations

import math

import mlx.core as mx

from ...errors import InvalidRequest

GRID_BITS = 32  # a product's largest entry becomes at most 2^GRID_BITS grid units
ROW_BLOCK = 256
LIMIT = 2.0 ** 62  # what int64 sums may reach (a bound on every partial sum, checked before adding)


def scaled(x: mx.array, exponent: int) -> mx.array:
    """x * 2^exponent in x's dtype, exact (two steps keep each factor a normal float32)."""
    half = exponent // 2
    return x * mx.array(2.0 ** half, x.dtype) * mx.array(2.0 ** (exponent - half), x.dtype)


def _shifted(units: mx.array, bits: int) -> mx.array:
    return units if bits == 0 else units * mx.array(1 << bits, mx.int64)


class ExactSum:
    """A running X^T X of float32 rows whose value is independent of the order the rows' batches come in."""

    def __init__(self) -> None:
        self.width = 0
        self.units: list[mx.array | None] = []  # per row block: the sum in grid units (int64)
        self.exponents: list[int | None] = []  # per row block: the grid is 2^exponent
        self.bounds: list[float] = []  # per row block: a bound on |units|, checked against LIMIT
        self.tokens = 0

    def add_rows(self, rows: mx.array) -> None:
        """Add rows.T @ rows for float32 rows (n, in)."""
        if not self.width:
            self.width = rows.shape[1]
            count = math.ceil(self.width / ROW_BLOCK)
            self.units, self.exponents, self.bounds = [None] * count, [None] * count, [0.0] * count
        for block, start in enumerate(range(0, self.width, ROW_BLOCK)):
            self._add(block, [rows[:, start:start + ROW_BLOCK].T @ rows])
        self.tokens += rows.shape[0]

    def _add(self, block: int, holder: list[mx.array]) -> None:
        """Add the product in `holder` (a list, emptied here so that nothing but the graph holds the product
        when it is rounded: MLX then rounds it in place, and the running sum is added to in place)."""
        product = holder.pop()
        largest = mx.abs(product).max().item()
        if not math.isfinite(largest):
            raise InvalidRequest("calibration: a layer's inputs overflowed to infinity or NaN; calibrate in float32 "
                                 "or with other prompts")
        if largest == 0:
            return
        exponent = math.frexp(largest)[1] - GRID_BITS  # largest < 2^(exponent + GRID_BITS)
        units = mx.round(scaled(product, -exponent)).astype(mx.int64)
        del product
        held = self.exponents[block]
        if held is None:
            self.units[block], self.exponents[block], self.bounds[block] = units, exponent, 2.0 ** GRID_BITS
        else:
            finest = min(held, exponent)
            bound = self.bounds[block] * 2.0 ** (held - finest) + 2.0 ** (GRID_BITS + exponent - finest)
            _check(bound)
            running, self.units[block] = self.units[block], None
            self.units[block] = _shifted(running, held - finest) + _shifted(units, exponent - finest)
            del running, units
            self.exponents[block], self.bounds[block] = finest, bound
        mx.eval(self.units[block])

    def total(self, ranks=None, what: str = "calibration", own_seconds: float = 0.0) -> tuple[mx.array | None, int]:
        """(X^T X as float32, rows) over every rank's rows (ranks: a core.distributed.World; None: this process
        alone); the running sum is let go. Every rank of the job must call it, in the same order."""
        from ...distributed import World, all_gather_bytes, all_sum, decode, encode
        ranks = ranks or World()
        mine = {"width": self.width, "exponents": self.exponents, "bounds": self.bounds, "tokens": self.tokens}
        parts = [mine] if ranks.size == 1 else \
            [decode(b) for b in all_gather_bytes(ranks, encode(mine), what=what, own_seconds=own_seconds)]
        width = max(p["width"] for p in parts)
        tokens = sum(p["tokens"] for p in parts)
        if not width:
            return None, tokens
        rows = []
        for block, start in enumerate(range(0, width, ROW_BLOCK)):
            held = [(p["exponents"][block], p["bounds"][block]) for p in parts if p["width"] and
                    p["exponents"][block] is not None]
            if not held:
                rows.append(mx.zeros((min(ROW_BLOCK, width - start), width), mx.float32))
                continue
            finest = min(e for e, _ in held)
            _check(sum(b * 2.0 ** (e - finest) for e, b in held))
            own = self.units[block] if self.units and self.units[block] is not None else None
            units = _shifted(own, self.exponents[block] - finest) if own is not None else \
                mx.zeros((min(ROW_BLOCK, width - start), width), mx.int64)
            if self.units:
                self.units[block] = None
            if ranks.size > 1:
                units = all_sum(ranks, units, what=what, own_seconds=own_seconds)
            rows.append(scaled(units.astype(mx.float32), finest))
            mx.eval(rows[-1])
            del units
        self.__init__()
        return mx.concatenate(rows, axis=0) if len(rows) > 1 else rows[0], tokens


def _check(bound: float) -> None:
    if bound >= LIMIT:
        raise InvalidRequest("calibration: one layer's inputs differ in size by a factor of more than about 2^15 "
                             "between calls, so quantbench cannot add their statistics exactly; calibrate with "
                             "other prompts")
