"""One rank against two on this machine, through mlx.launch and MLX's ring backend over localhost.

    python benchmarks/distributed.py [--prompts 40] [--rounds 2] [--steps 2] [--size 64]
                                     [--parts eval,calibration,tensor-parallel] [--json]

Peak memory: about 1.5 GB per process with the default width (3 GB for two ranks): run it under the
shared machine's heavy-memory lock.

1. Data-parallel lab: `quantbench eval --model demo-turbo --precisions bf16,4 --limit PROMPTS` as one process
   and as 2 ranks (each rank draws every other prompt), alternating, wall time of the whole command
   (start-up included). The two reports must agree on every figure but the timings.
2. Calibration: `quantbench save --model demo-turbo --quantize 3:gptq` (16 calibration prompts) as one process
   and as 2 ranks (each rank samples every other prompt and replays only its calls; the ranks add their
   statistics after each pass), alternating, wall time of the whole command. The saved tensors must be
   the same bits.
3. Tensor-parallel generate: a Klein-4B-shaped random model (`random-model --arch klein-4b --width-scale W`,
   written once into a scratch folder) generated at bf16 and 4 bits as one process and as 2 ranks:
   the transformer bytes rank 0 holds, the checkpoint bytes it read (one process reads the whole
   transformer), its MLX peak while loading the transformer and the mean step time (ratios: rank 0 of 2
   over one process). The memory model's figure for the full-size
   Klein-4B (Plan.ranks) is printed beside it.

Prints a table, then JSON (or only the JSON with --json). Timings on a shared 2-core machine are noisy; the
ratios are from alternating runs in one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAUNCH = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
QUANTBENCH = [sys.executable, "-m", "quantbench.cli.main"]
TIMINGS = {"seconds_per_image", "distributed"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], ranks: int, env: dict) -> tuple[dict, float]:
    command = QUANTBENCH + args if ranks == 1 else [*LAUNCH, "-n", str(ranks), "--backend", "ring",
                                                    "--starting-port", str(free_port()), "--", *QUANTBENCH, *args]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    try:
        return json.loads(done.stdout), seconds
    except ValueError:
        sys.exit(f"benchmark run failed ({' '.join(args[:3])}, {ranks} ranks): {done.stderr.strip()[-2000:]}")


def without_timings(report: dict) -> dict:
    report = {k: v for k, v in report.items() if k not in TIMINGS}
    report["results"] = [{k: v for k, v in row.items() if k not in TIMINGS} for row in report["results"]]
    return report


def eval_sweep(prompts: int, rounds: int, env: dict) -> dict:
    args = ["eval", "--model", "demo-turbo", "--precisions", "bf16,4", "--limit", str(prompts), "--json", "--quiet"]
    walls: dict[int, list[float]] = {1: [], 2: []}
    reports: dict[int, dict] = {}
    for i in range(rounds):
        for ranks in ((1, 2) if i % 2 == 0 else (2, 1)):
            reports[ranks], seconds = run(args, ranks, env)
            walls[ranks].append(seconds)
    same = without_timings(reports[1]) == without_timings(reports[2])
    best = {r: min(w) for r, w in walls.items()}
    return {"prompts": prompts, "precisions": ["bf16", "4"], "pictures": 2 * prompts, "wall_seconds": walls,
            "best_wall_seconds": best, "ratio_2_over_1": round(best[2] / best[1], 3), "same_results": same,
            "ranks": reports[2].get("distributed", {}).get("ranks")}


def saved_digest(folder: Path) -> str:
    """sha256 over the saved transformer's tensors (names and bytes; its metadata holds timings)."""
    import hashlib
    import mlx.core as mx
    import numpy as np
    digest = hashlib.sha256()
    tensors = mx.load(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    for name in sorted(tensors):
        value = tensors[name]
        digest.update(name.encode() + np.asarray(value.view(mx.uint16) if value.dtype == mx.bfloat16 else value).tobytes())
    return digest.hexdigest()


def calibration(rounds: int, folder: Path, env: dict) -> dict:
    walls: dict[int, list[float]] = {1: [], 2: []}
    digests: dict[int, str] = {}
    for i in range(rounds):
        for ranks in ((1, 2) if i % 2 == 0 else (2, 1)):
            out = folder / f"calibrated-{ranks}"
            _, seconds = run(["save", "--model", "demo-turbo", "--quantize", "3:gptq", "--out", str(out), "--overwrite",
                              "--json"], ranks, env)
            walls[ranks].append(seconds)
            digests[ranks] = saved_digest(out)
    best = {r: min(w) for r, w in walls.items()}
    return {"model": "demo-turbo", "quantize": "3:gptq", "wall_seconds": walls, "best_wall_seconds": best,
            "ratio_2_over_1": round(best[2] / best[1], 3), "same_tensors": digests[1] == digests[2]}


def tensor_parallel(folder: Path, steps: int, size: int, env: dict) -> list[dict]:
    rows = []
    checkpoint = sum(f.stat().st_size for f in (folder / "klein-4b-shaped" / "transformer").glob("*.safetensors"))
    for quantize in (None, "4"):
        figures = {}
        for ranks in (1, 2):
            out = folder / f"tp-{quantize or 'bf16'}-{ranks}.png"
            args = ["generate", "--model", str(folder / "klein-4b-shaped"), "--prompt", "a red fox", "--seed", "1",
                    "--steps", str(steps), "--width", str(size), "--height", str(size), "--out", str(out), "--overwrite",
                    "--json", "--quiet", "--force", *(["--quantize", quantize] if quantize else [])]
            summary, _ = run(args, ranks, env)
            rank0 = summary.get("ranks", [{}])[0]
            figures[ranks] = {"transformer_bytes": summary["load"]["quantization"][0]["bytes"],
                              "mean_step_seconds": round(sum(summary["step_seconds"]) / len(summary["step_seconds"]), 4),
                              "peak_rss": summary["peak_rss"],
                              "load_peak_mlx": summary["phase_peaks"].get("load transformer"),
                              # one process reads the whole transformer checkpoint
                              "read_bytes": rank0.get("transformer_read_bytes", checkpoint)}
        rows.append({"precision": quantize or "bf16", "one_rank": figures[1], "two_ranks_rank0": figures[2],
                     "bytes_ratio": round(figures[2]["transformer_bytes"] / figures[1]["transformer_bytes"], 4),
                     "read_ratio": round(figures[2]["read_bytes"] / figures[1]["read_bytes"], 4),
                     "load_peak_ratio": round(figures[2]["load_peak_mlx"] / figures[1]["load_peak_mlx"], 4),
                     "step_ratio": round(figures[2]["mean_step_seconds"] / figures[1]["mean_step_seconds"], 3)})
    return rows


def full_size_prediction() -> list[dict]:
    import quantbench.core  # noqa: F401  (the fast BLAS first)
    from quantbench.core.catalog import get_entry
    from quantbench.core.memory_model import Plan, predict
    entry, rows = get_entry("klein-4b"), []
    for bits in (None, 8, 4):
        one = predict(entry, Plan(transformer_bits=bits)).component_bytes("transformer")
        two = predict(entry, Plan(transformer_bits=bits, ranks=2)).component_bytes("transformer")
        rows.append({"precision": "bf16" if bits is None else f"q{bits}", "one_rank": one, "per_rank_of_2": two,
                     "ratio": round(two / one, 4)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40, help="eval prompts per precision (default 40)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the eval sweep (default 2)")
    parser.add_argument("--steps", type=int, default=2, help="tensor-parallel generate steps (default 2)")
    parser.add_argument("--size", type=int, default=64, help="tensor-parallel generate size in pixels (default 64)")
    parser.add_argument("--width-scale", default="0.25", help="Klein-4B-shaped random model width (default 0.25)")
    parser.add_argument("--parts", default="eval,calibration,tensor-parallel",
                        help="which measurements, comma-separated (default: all three)")
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    unknown = parts - {"eval", "calibration", "tensor-parallel"}
    if unknown:
        sys.exit(f"--parts: unknown {', '.join(sorted(unknown))} (eval, calibration, tensor-parallel)")
    scratch = Path(tempfile.mkdtemp(prefix="qb-distributed-"))
    env = {**os.environ, "HOME": str(scratch), "XDG_CACHE_HOME": str(scratch / ".cache")}
    try:
        report = {"machine": f"{os.cpu_count()} CPU cores, shared"}
        if "eval" in parts:
            report["eval_sweep"] = eval_sweep(args.prompts, args.rounds, env)
        if "calibration" in parts:
            report["calibration"] = calibration(args.rounds, scratch, env)
        if "tensor-parallel" in parts:
            subprocess.run([*QUANTBENCH, "random-model", "--arch", "klein-4b", "--width-scale", args.width_scale,
                            "--out", str(scratch / "klein-4b-shaped")], check=True, capture_output=True, env=env)
            report.update(tensor_parallel=tensor_parallel(scratch, args.steps, args.size, env),
                          klein_4b_full_size_predicted=full_size_prediction(), width_scale=float(args.width_scale))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not args.json:
        print_table(report, args)
    print(json.dumps(report, indent=2))


def print_table(report: dict, args) -> None:
    if "eval_sweep" in report:
        e = report["eval_sweep"]
        print(f"eval sweep, demo-turbo, {e['prompts']} prompts x bf16,4 ({e['pictures']} pictures), best of "
              f"{args.rounds}: 1 rank {e['best_wall_seconds'][1]:.1f} s, 2 ranks {e['best_wall_seconds'][2]:.1f} s, "
              f"ratio {e['ratio_2_over_1']:.2f}; same results: {e['same_results']}")
    if "calibration" in report:
        c = report["calibration"]
        print(f"calibration, save demo-turbo -q 3:gptq, best of {args.rounds}: 1 rank {c['best_wall_seconds'][1]:.1f} s, "
              f"2 ranks {c['best_wall_seconds'][2]:.1f} s, ratio {c['ratio_2_over_1']:.2f}; same tensors: "
              f"{c['same_tensors']}")
    if "tensor_parallel" in report:
        print(f"\ntensor-parallel generate, Klein-4B-shaped random model at width x{args.width_scale}, {args.size}x{args.size}, "
              f"{args.steps} steps")
        print(f"{'precision':<10}{'1 rank bytes':>14}{'rank 0 of 2':>14}{'ratio':>8}{'read ratio':>11}"
              f"{'load peak':>10}{'1 rank s/step':>15}{'2 ranks s/step':>16}{'ratio':>8}")
        for r in report["tensor_parallel"]:
            one, two = r["one_rank"], r["two_ranks_rank0"]
            print(f"{r['precision']:<10}{one['transformer_bytes']:>14,}{two['transformer_bytes']:>14,}"
                  f"{r['bytes_ratio']:>8.3f}{r['read_ratio']:>11.3f}"
                  f"{r['load_peak_ratio']:>10.3f}{one['mean_step_seconds']:>15.3f}{two['mean_step_seconds']:>16.3f}{r['step_ratio']:>8.2f}")
        print("\nfull-size Klein-4B, memory model: transformer bytes per rank of 2 / one rank: " + ", ".join(
            f"{r['precision']} {r['ratio']:.3f}" for r in report["klein_4b_full_size_predicted"]))
    print()


if __name__ == "__main__":
    main()
