"""The elementwise and attention work of a denoising step, op by op: MLX's own kernels, quantbench's
(core/blocks/fast_math.py, core/blocks/attention.py) and torch's, on the same shapes.

Defaults are FLUX.2 Klein 4B's at width 0.25 and 256x256 (6 heads of 128, 768 positions: 512 text + 256
image; MLP hidden 2304). Each op is timed in alternating rounds (every variant once, then again) and the
fastest run is kept, in wall and CPU seconds; torch runs on all cores, MLX's elementwise kernels on one.

`--attention` (or `--lanes`) times quantbench's CPU attention alone, on heads laid out as the blocks hand
them over: its C kernel (core/blocks/attention_kernel.c; now), the same kernel with BLAS's sgemm for its
products (before), MLX's ops with the calls in lanes (core/cpu_lanes.py; before, and still
where the kernel cannot run), the same lanes with each lane's next call queued (tried) and the same calls
one after another on every BLAS thread (before the lanes), with each call's MLX peak above what was
resident; Klein 4B's full width is `--heads 24`, and 1024x1024 is `--tokens 4608`.

    python benchmarks/attention_ops.py [--heads 6] [--tokens 768] [--head-dim 128] [--hidden 2304]
        [--rounds 10] [--attention] [--json]
"""

from __future__ import annotations

import json
import math
import statistics
import time

import quantbench.core  # noqa: F401  (OpenBLAS under MLX first)
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from quantbench.core import cpu_lanes
from quantbench.core.blocks import attention, attention_kernel, fast_math
from quantbench.core.blocks.attention import scaled_dot_product_attention
from quantbench.cli import arguments
from quantbench.cli.main import OneLineParser

from cpus import usable_cpus


def variants(heads: int, tokens: int, head_dim: int, hidden: int) -> dict[str, dict[str, callable]]:
    import torch

    torch.set_num_threads(usable_cpus())
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, heads, tokens, head_dim)).astype(np.float32) for _ in range(3))
    scores = (rng.standard_normal((1, 1, tokens, tokens)) * 3).astype(np.float32)  # one head's, as the CPU runs
    mlp = rng.standard_normal((1, tokens, 2 * hidden)).astype(np.float32)
    mq, mk, mv, ms, mm = (mx.array(a) for a in (q, k, v, scores, mlp))
    tq, tk, tv, ts, tm = (torch.from_numpy(a) for a in (q, k, v, scores, mlp))
    mx.eval(mq, mk, mv, ms, mm)
    scale = 1 / math.sqrt(head_dim)

    def weights(s):
        return fast_math.exp_of_difference(s, mx.max(s, axis=-1, keepdims=True))

    def mlx_swiglu(x):
        gate, value = mx.split(x, 2, axis=-1)
        return nn.silu(gate) * value

    def torch_swiglu(x):
        gate, value = x.chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * value

    return {
        f"softmax weights, one head ({tokens}x{tokens})": {
            "mlx": lambda: mx.eval(mx.softmax(ms, axis=-1, precise=True)),
            "quantbench": lambda: mx.eval(weights(ms)),
            "torch": lambda: torch.softmax(ts, dim=-1)},
        f"attention, {heads} heads of {head_dim}": {
            "mlx": lambda: mx.eval(mx.fast.scaled_dot_product_attention(mq, mk, mv, scale=scale)),
            "quantbench": lambda: mx.eval(scaled_dot_product_attention(mq, mk, mv, scale)),
            "torch": lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)},
        f"SwiGLU ({tokens}x{2 * hidden})": {
            "mlx": lambda: mx.eval(mx.compile(mlx_swiglu)(mm)),
            "quantbench": lambda: mx.eval(fast_math.swiglu(mm)),
            "torch": lambda: torch_swiglu(tm)},
        f"GELU tanh ({tokens}x{2 * hidden})": {
            "mlx": lambda: mx.eval(nn.gelu_approx(mm)),
            "quantbench": lambda: mx.eval(fast_math.gelu_approx(mm)),
            "torch": lambda: torch.nn.functional.gelu(tm, approximate="tanh")},
    }


def measure(ops: dict[str, dict[str, callable]], rounds: int) -> dict[str, dict[str, dict[str, float]]]:
    best = {op: {name: {"wall_ms": math.inf, "cpu_ms": math.inf} for name in runs} for op, runs in ops.items()}
    for op, runs in ops.items():
        for run in runs.values():
            run()
        for _ in range(rounds):
            for name, run in runs.items():
                wall, cpu = time.perf_counter(), time.process_time()
                run()
                cell = best[op][name]
                cell["wall_ms"] = min(cell["wall_ms"], 1000 * (time.perf_counter() - wall))
                cell["cpu_ms"] = min(cell["cpu_ms"], 1000 * (time.process_time() - cpu))
    return best


def lanes_comparison(heads: int, tokens: int, head_dim: int, rounds: int) -> dict[str, dict[str, float]]:
    """The CPU attention's C kernel (now), the same with BLAS's products (before), MLX's ops in lanes (before
    that), the same lanes with each lane's next call queued (tried) and one after another (before the lanes): fastest and median wall, fastest CPU
    milliseconds over alternating rounds, and the largest MLX peak of a call above what was resident."""
    # (B, H, L, D) seen from (B, L, H, D), as the blocks hand attention its heads
    q, k, v = (mx.random.normal((1, tokens, heads, head_dim), key=mx.random.key(i)).transpose(0, 2, 1, 3)
               for i in range(3))
    mx.eval(q, k, v)
    lanes = cpu_lanes.lane_count()
    ahead = attention.CALLS_AHEAD
    runs = {"C kernel (now)": (lanes, ahead, True, True),
            "C kernel, BLAS's products (before)": (lanes, ahead, True, False),
            f"MLX ops in {lanes} lanes (before)": (lanes, ahead, False, True),
            f"MLX ops in {lanes} lanes, next call queued (tried)": (lanes, ahead + 1, False, True),
            "MLX ops one after another (before the lanes)": (1, ahead, False, True)}
    walls = {name: [] for name in runs}
    best = {name: {"wall_ms": math.inf, "cpu_ms": math.inf, "peak_mb": 0.0} for name in runs}
    for round_ in range(rounds + 1):
        for name, (count, queued, kernel, products) in (runs.items() if round_ % 2 == 0 else reversed(runs.items())):
            attention.lane_count, attention.CALLS_AHEAD = (lambda count=count: count), queued
            attention.KERNEL, attention_kernel.PRODUCTS = kernel, products
            mx.reset_peak_memory()
            resident = mx.get_active_memory()
            wall, cpu = time.perf_counter(), time.process_time()
            mx.eval(scaled_dot_product_attention(q, k, v, 1 / math.sqrt(head_dim)))
            wall, cpu = 1000 * (time.perf_counter() - wall), 1000 * (time.process_time() - cpu)
            if round_:  # the first round warms up
                cell = best[name]
                walls[name].append(wall)
                cell["wall_ms"], cell["cpu_ms"] = min(cell["wall_ms"], wall), min(cell["cpu_ms"], cpu)
                cell["peak_mb"] = max(cell["peak_mb"], (mx.get_peak_memory() - resident) / 2**20)
    attention.lane_count, attention.CALLS_AHEAD, attention.KERNEL = cpu_lanes.lane_count, ahead, True
    attention_kernel.PRODUCTS = True
    for name, cell in best.items():
        cell["median_wall_ms"] = statistics.median(walls[name])
    return best


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=arguments.whole(1, 1024, "--heads"), default=6)
    parser.add_argument("--tokens", type=arguments.whole(1, 1 << 20, "--tokens"), default=768)
    parser.add_argument("--head-dim", type=arguments.whole(1, 4096, "--head-dim"), default=128)
    parser.add_argument("--hidden", type=arguments.whole(1, 1 << 16, "--hidden"), default=2304)
    parser.add_argument("--rounds", type=arguments.rounds, default=10)
    parser.add_argument("--attention", "--lanes", dest="lanes", action="store_true",
                        help="time the CPU attention alone: the C kernel against MLX's ops in lanes and one call "
                             "after another")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.lanes:
        rows = lanes_comparison(args.heads, args.tokens, args.head_dim, args.rounds)
        if args.json:
            print(json.dumps({"shapes": vars(args), "attention": rows}, indent=2))
            return 0
        before = rows[list(rows)[-1]]["wall_ms"]  # the speed-up over the oldest form
        print(f"attention, {args.heads} heads of {args.head_dim}, {args.tokens} positions (fastest of {args.rounds})")
        print(f"{'calls':<52}{'wall ms':>10}{'median':>10}{'CPU ms':>10}{'MLX peak MB':>13}{'speed-up':>10}")
        for name, row in rows.items():
            print(f"{name:<52}{row['wall_ms']:>10.1f}{row['median_wall_ms']:>10.1f}{row['cpu_ms']:>10.1f}"
                  f"{row['peak_mb']:>13.1f}{before / row['wall_ms']:>9.2f}x")
        return 0
    results = measure(variants(args.heads, args.tokens, args.head_dim, args.hidden), args.rounds)
    if args.json:
        print(json.dumps({"shapes": vars(args), "ops": results}, indent=2))
        return 0
    names = ("mlx", "quantbench", "torch")
    print(f"{'op':<44}" + "".join(f"{n + ' ms (cpu)':>22}" for n in names) + f"{'mlx / quantbench':>18}")
    for op, row in results.items():
        cells = "".join(f"{row[n]['wall_ms']:>12.2f} ({row[n]['cpu_ms']:6.2f})" for n in names)
        print(f"{op:<44}{cells}{row['mlx']['wall_ms'] / row['quantbench']['wall_ms']:>17.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
