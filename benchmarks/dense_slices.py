"""The quantized CPU path's Linear layers against unquantized ones, at a FLUX.2 transformer's real shapes.

A denoising step's Linear layers are every (input, output, tokens) shape of the transformer's blocks,
weighted by how many of them a step runs: in a double-stream block the image stream's projections see
the image tokens and the text stream's see the prompt's 512, the single-stream blocks see both. Each
shape is built once, at random, and timed unquantized (one BLAS product) and through the dense path
(`core/quant/dense.py`: dequantize a slice of rows, multiply) at 8 and 4 bits, with the slices the
path uses now and with the earlier rule (4 MB of dense weight a slice, however few rows that is), in
alternating rounds so that a shared machine's drift hits every variant alike. One layer is in memory
at a time (at most about 0.5 GB for Klein 4B), so it runs where a whole full-size step cannot.

Reports CPU seconds (getrusage, all threads; robust to other jobs) and wall seconds per step's worth
of Linear work, and each variant's ratio to unquantized.

    python benchmarks/dense_slices.py [--config transformer/config.json] [--size 256] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import quantbench.core  # noqa: F401  (OpenBLAS under MLX first)
import mlx.core as mx
import mlx.nn as nn

from quantbench.core.quant import dense

TEXT_TOKENS = 512
KLEIN_4B = {"num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24, "attention_head_dim": 128,
            "mlp_ratio": 3.0}


def step_layers(config: dict, image_tokens: int) -> list[tuple[int, int, int, int]]:
    """(input, output, tokens, count) of every block Linear a step runs."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    hidden = int(inner * config.get("mlp_ratio", 3.0))
    double, single = config["num_layers"], config["num_single_layers"]
    layers = []
    for tokens in (image_tokens, TEXT_TOKENS):  # the image stream, then the text stream
        layers += [(inner, inner, tokens, 4 * double), (inner, 2 * hidden, tokens, double),
                   (hidden, inner, tokens, double)]
    both = image_tokens + TEXT_TOKENS
    layers += [(inner, 3 * inner + 2 * hidden, both, single), (inner + hidden, inner, both, single)]
    return layers


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(layer, x, min_rows: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one call, with the dense path's slices at least `min_rows` rows."""
    kept = dense.DENSE_SLICE_MIN_ROWS
    dense.DENSE_SLICE_MIN_ROWS = min_rows
    try:
        mx.eval(layer(x))  # warm: compiled kernels, allocator
        cpu, wall = cpu_seconds(), time.perf_counter()
        mx.eval(layer(x))
        return time.perf_counter() - wall, cpu_seconds() - cpu
    finally:
        dense.DENSE_SLICE_MIN_ROWS = kept


def variants() -> list[tuple[str, int | None, int]]:
    """(name, bits, minimum rows a slice): unquantized, then each precision with the earlier and current slices."""
    return [("unquantized", None, 1)] + [(f"{bits}-bit {name}", bits, rows) for bits in (8, 4)
                                         for name, rows in (("4 MB slices", 1),
                                                            ("current slices", dense.DENSE_SLICE_MIN_ROWS))]


def measure(config: dict, size: int, rounds: int, log=print) -> dict:
    image_tokens = (size // 16) ** 2
    totals = {name: [0.0, 0.0] for name, _, _ in variants()}
    for fan_in, fan_out, tokens, count in step_layers(config, image_tokens):
        linear = nn.Linear(fan_in, fan_out, bias=False)
        x = mx.random.normal((1, tokens, fan_in))
        mx.eval(linear.parameters(), x)
        layers = {None: linear}
        for bits in (8, 4):
            layers[bits] = nn.QuantizedLinear.from_linear(linear, group_size=64, bits=bits)
            dense.use_dense_matmul(layers[bits])
            mx.eval(layers[bits].parameters())
        best = {}
        for _ in range(rounds):
            for name, bits, rows in variants():
                wall, cpu = timed(layers[bits], x, rows)
                old = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(old[0], wall), min(old[1], cpu))
        for name, (wall, cpu) in best.items():
            totals[name][0] += count * wall
            totals[name][1] += count * cpu
        log(f"{fan_in:>6} -> {fan_out:<6} x {tokens} tokens x {count}: " + ", ".join(
            f"{name} {best[name][1] / best['unquantized'][1]:.2f}" for name, _, _ in variants()[1:]) + " (CPU)")
        del linear, layers, x
    base_wall, base_cpu = totals["unquantized"]
    rows = [{"variant": name, "wall_seconds": wall, "cpu_seconds": cpu, "wall_ratio": wall / base_wall,
             "cpu_ratio": cpu / base_cpu} for name, (wall, cpu) in totals.items()]
    return {"size": size, "image_tokens": image_tokens, "text_tokens": TEXT_TOKENS, "rounds": rounds,
            "current_min_rows": dense.DENSE_SLICE_MIN_ROWS, "slice_bytes": dense.DENSE_SLICE_BYTES, "rows": rows}


def table(report: dict) -> list[str]:
    lines = ["| variant | Linear CPU s/step | over unquantized | Linear wall s/step | over unquantized |",
             "|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['variant']} | {row['cpu_seconds']:.2f} | {row['cpu_ratio']:.3f} | "
                     f"{row['wall_seconds']:.2f} | {row['wall_ratio']:.3f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a FLUX.2 transformer config.json (default: Klein 4B's sizes)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (tokens = (size/16)^2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = json.loads(args.config.read_text()) if args.config else KLEIN_4B
    report = measure(config, args.size, args.rounds, log=(lambda _: None) if args.json else print)
    print(json.dumps(report, indent=2) if args.json else "\n".join(table(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
