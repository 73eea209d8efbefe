"""MLX's float32 matmul under each OpenBLAS core (OPENBLAS_CORETYPE) on this machine.

A fresh process per core and round (OpenBLAS reads the setting once, when it loads), rounds alternating;
each process times a FLUX.2 Klein-4B step's Linear shapes (256x256: 768 tokens) and reports GFLOP/s.
"chosen" is quantbench's choice for the CPU's flags (OPENBLAS_CORETYPE unset, as for a user who sets nothing),
"detected" OpenBLAS's own (QUANTBENCH_BLAS=detected).

    python benchmarks/blas_cores.py --cores chosen,detected,Haswell,SkylakeX --rounds 3 [--repeats 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# (tokens, inputs, outputs): the widest projections of a Klein-4B step at 256x256 and a 256-token image stream.
SHAPES = ((768, 3072, 27648), (768, 12288, 3072), (768, 3072, 9216), (256, 3072, 18432), (768, 3072, 3072))

_TIMER = """
import json, sys, time
import quantbench.core
from quantbench.core.cpu_blas import blas_status
import mlx.core as mx
rates = []
for m, k, n in json.loads(sys.argv[1]):
    a, b = mx.random.uniform(-1, 1, (m, k)), mx.random.uniform(-1, 1, (k, n))  # a quarter of normal's time to draw
    mx.eval(a, b)
    best = float("inf")
    for _ in range(int(sys.argv[2])):
        start = time.perf_counter(); mx.eval(a @ b); best = min(best, time.perf_counter() - start)
    rates.append(2 * m * k * n / best / 1e9)
print(json.dumps({"blas": blas_status().detail, "gflops": rates}))
"""


def time_core(core: str, repeats: int) -> dict:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("QUANTBENCH_BLAS", None)
    if core == "detected":
        env["QUANTBENCH_BLAS"] = "detected"
    elif core != "chosen":
        env["OPENBLAS_CORETYPE"] = core
    done = subprocess.run([sys.executable, "-c", _TIMER, json.dumps(SHAPES), str(repeats)], capture_output=True, text=True,
                          env=env, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"error: the timing process for {core} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default="chosen,detected,Haswell",
                        help="comma-separated: chosen (quantbench's), detected (OpenBLAS's own), or OpenBLAS core names")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4, help="products timed per shape, the fastest kept (default 4)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cores = [c.strip() for c in args.cores.split(",") if c.strip()]
    if not cores or args.rounds < 1 or args.repeats < 1:
        parser.error("give at least one core, one round and one repeat")
    runs: dict[str, list[dict]] = {core: [] for core in cores}
    for round_number in range(args.rounds):
        for core in cores:
            print(f"round {round_number + 1}: {core} ...", file=sys.stderr)
            runs[core].append(time_core(core, args.repeats))
    rows = [{"core": core, "blas": found[0]["blas"],
             "gflops_median": [statistics.median(r["gflops"][i] for r in found) for i in range(len(SHAPES))]}
            for core, found in runs.items()]
    if args.json:
        print(json.dumps({"shapes": SHAPES, "rows": rows}, indent=2))
        return 0
    print("core         " + "  ".join(f"{m}x{k}->{n:<6}" for m, k, n in SHAPES))
    for row in rows:
        print(f"{row['core']:12s} " + "  ".join(f"{g:>17.0f}" for g in row["gflops_median"]) + f"   {row['blas']}")
    print(f"GFLOP/s, the median of the rounds' fastest of {args.repeats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
