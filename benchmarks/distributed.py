"""One rank against two on this machine, through mlx.launch and MLX's ring backend over localhost.

    python benchmarks/distributed.py [--prompts 40] [--precisions bf16,4] [--rounds 2] [--steps 2] [--size 64]
                                     [--parts eval,calibration,tensor-parallel] [--setups one,launch,direct] [--json]

Peak memory: about 1.5 GB per process with the default width (3 GB for two ranks): run it under the
shared machine's heavy-memory lock.

1. Data-parallel lab: `quantbench eval --model demo-turbo --precisions PRECISIONS --limit PROMPTS` as one
   process, as 2 ranks started by mlx.launch (as a user runs it), and as the same 2 ranks started directly
   with the environment mlx.launch's ring launcher gives them (MLX_RANK, MLX_HOSTFILE) but no launcher
   process, alternating; wall time of the whole command (start-up included). `--setups` adds, for what
   each of the ranks' measures for a shared host saves: `launch-kept` (mlx.launch with its launcher left at
   its priority, QUANTBENCH_LAUNCHER_PRIORITY=keep), `launch-nice` (the launcher 10 nice levels down rather than in
   SCHED_IDLE), `direct-unbound` (every rank on every core,
   QUANTBENCH_RANK_CORES=all) and `direct-1-thread` (one OpenBLAS thread per rank, which changes the last
   bits of the results). The reports are compared with the one process's on every figure but the
   timings. Each process records where its time went (QUANTBENCH_PHASES_DIR,
   core/distributed_phases.py): start-up (interpreter and imports), joining the ring, loading, drawing,
   scoring, gathering (waiting for the other rank included), printing; wall and CPU seconds (user + system,
   all threads) for each, its OpenBLAS threads and cores, and the launcher's own CPU seconds (its
   children's CPU less the ranks').
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

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quantbench.cli import arguments
from quantbench.cli.main import OneLineParser

LAUNCH = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
QUANTBENCH = [sys.executable, "-m", "quantbench.cli.main"]
TIMINGS = {"seconds_per_image", "distributed"}
PHASES_ENV = "QUANTBENCH_PHASES_DIR"  # core/distributed_phases.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], ranks: int, env: dict, launcher: str = "mlx.launch") -> tuple[dict, float]:
    report, seconds, _ = timed_run(args, ranks, env, launcher)
    return report, seconds


def timed_run(args: list[str], ranks: int, env: dict, launcher: str = "mlx.launch") -> tuple[dict, float, dict]:
    """(rank 0's JSON, wall seconds, where the time went): each process's phase record and the CPU seconds
    of whatever else ran (the launcher: every waited-for child's CPU less the ranks' own)."""
    phases_dir = Path(tempfile.mkdtemp(prefix="qb-phases-"))
    env = {**env, PHASES_ENV: str(phases_dir)}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    if ranks == 1:
        done = subprocess.run(QUANTBENCH + args, capture_output=True, text=True, env=env, timeout=3600,
                              stdin=subprocess.DEVNULL)
        stdout, stderr, failed = done.stdout, done.stderr, done.returncode != 0
    elif launcher == "mlx.launch":
        done = subprocess.run([*LAUNCH, "-n", str(ranks), "--backend", "ring", "--starting-port", str(free_port()),
                               "--", *QUANTBENCH, *args], capture_output=True, text=True, env=env, timeout=3600,
                              stdin=subprocess.DEVNULL)
        stdout, stderr, failed = done.stdout, done.stderr, False  # mlx.launch exits 0 either way: the JSON says
    else:
        stdout, stderr, failed = start_ranks_directly(args, ranks, env)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        report = json.loads(stdout)
        if failed:
            raise ValueError
    except ValueError:
        sys.exit(f"benchmark run failed ({' '.join(args[:3])}, {ranks} ranks): {stderr.strip()[-2000:]}")
    records = sorted((json.loads(f.read_text()) for f in phases_dir.glob("rank-*.json")), key=lambda r: r["rank"])
    shutil.rmtree(phases_dir, ignore_errors=True)
    ranks_cpu = sum(p["user"] + p["sys"] for r in records for p in r["phases"].values())
    children_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return report, seconds, {"ranks": records, "launcher_cpu": round(max(0.0, children_cpu - ranks_cpu), 2)}


def start_ranks_directly(args: list[str], ranks: int, env: dict) -> tuple[str, str, bool]:
    """The ranks as mlx.launch's ring launcher starts them on one host (MLX_RANK and a hostfile of
    127.0.0.1:port per rank), without its process in between; rank 0's stdout."""
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as hostfile:
        json.dump([[f"127.0.0.1:{port + r}"] for r in range(ranks)], hostfile)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        processes = [subprocess.Popen(QUANTBENCH + args, env={**env, "MLX_RANK": str(r), "MLX_HOSTFILE": hostfile.name},
                                      stdout=out if r == 0 else subprocess.DEVNULL, stderr=err,
                                      stdin=subprocess.DEVNULL) for r in range(ranks)]
        try:
            codes = [p.wait(timeout=3600) for p in processes]
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            os.unlink(hostfile.name)
        out.seek(0)
        err.seek(0)
        return out.read(), err.read(), any(codes)


def without_timings(report: dict) -> dict:
    report = {k: v for k, v in report.items() if k not in TIMINGS}
    report["results"] = [{k: v for k, v in row.items() if k not in TIMINGS} for row in report["results"]]
    return report


# name -> (label, ranks, launcher, extra environment)
SETUPS = {
    "one": ("1 process", 1, "none", {}),
    "launch": ("2 ranks, mlx.launch", 2, "mlx.launch", {}),
    "direct": ("2 ranks, started directly", 2, "direct", {}),
    # what the ranks' calming of the launcher (core/distributed_launcher.py) saves
    "launch-kept": ("2 ranks, mlx.launch, launcher kept", 2, "mlx.launch", {"QUANTBENCH_LAUNCHER_PRIORITY": "keep"}),
    "launch-nice": ("2 ranks, mlx.launch, launcher nice", 2, "mlx.launch", {"QUANTBENCH_LAUNCHER_PRIORITY": "nice"}),
    # what binding each rank to its share of the cores saves, and what splitting the BLAS threads between the
    # ranks would (it changes the results' last bits)
    "direct-unbound": ("2 ranks, started directly, every rank on every core", 2, "direct", {"QUANTBENCH_RANK_CORES": "all"}),
    "direct-1-thread": ("2 ranks, started directly, 1 BLAS thread each", 2, "direct", {"OPENBLAS_NUM_THREADS": "1"}),
}
DEFAULT_SETUPS = "one,launch,direct"


def eval_sweep(prompts: int, precisions: str, rounds: int, setups: list[str], env: dict) -> dict:
    """The sweep in each setup (the one process first), alternating: round i runs them in order, round i + 1
    in reverse; best wall time of each, its ratio over the one process's best, and whether its report is the
    one process's in every figure but the timings."""
    args = ["eval", "--model", "demo-turbo", "--precisions", precisions, "--limit", str(prompts), "--json", "--quiet"]
    chosen = [SETUPS[key] for key in setups]
    walls: dict[str, list[float]] = {label: [] for label, *_ in chosen}
    best: dict[str, tuple[float, dict]] = {}
    reports: dict[str, dict] = {}
    for i in range(rounds):
        for label, ranks, launcher, extra in (chosen if i % 2 == 0 else chosen[::-1]):
            reports[label], seconds, where = timed_run(args, ranks, {**env, **extra}, launcher)
            walls[label].append(round(seconds, 2))
            if label not in best or seconds < best[label][0]:
                best[label] = (seconds, where)
    single_label = chosen[0][0]
    one = without_timings(reports[single_label])
    pictures = prompts * len(precisions.split(","))
    single = best[single_label][0]
    return {"prompts": prompts, "precisions": precisions.split(","), "pictures": pictures, "wall_seconds": walls,
            "best_wall_seconds": {label: round(b[0], 2) for label, b in best.items()},
            "ratio_over_1_process": {label: round(b[0] / single, 3) for label, b in best.items()},
            "same_results": {label: without_timings(r) == one for label, r in reports.items()},
            "phases_of_best_run": {label: b[1] for label, b in best.items()}}


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
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=arguments.whole(1, 125, "--prompts"), default=40, help="eval prompts per precision, up to 125 (default 40)")
    parser.add_argument("--precisions", default="bf16,4", help="the eval sweep's precisions (default bf16,4)")
    parser.add_argument("--rounds", type=arguments.rounds, default=2, help="alternating rounds of the eval sweep (default 2)")
    parser.add_argument("--steps", type=arguments.steps, default=2, help="tensor-parallel generate steps (default 2)")
    parser.add_argument("--size", type=arguments.dimension("--size"), default=64, help="tensor-parallel generate size in pixels (default 64)")
    parser.add_argument("--width-scale", type=arguments.number(0, 1, "--width-scale", above=True), default=0.25, help="Klein-4B-shaped random model width (default 0.25)")
    parser.add_argument("--parts", default="eval,calibration,tensor-parallel",
                        help="which measurements, comma-separated (default: all three)")
    parser.add_argument("--setups", default=DEFAULT_SETUPS,
                        help=f"the eval sweep's setups, comma-separated, from {', '.join(SETUPS)} (default "
                             f"{DEFAULT_SETUPS}; the one process always runs, first)")
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    unknown = parts - {"eval", "calibration", "tensor-parallel"}
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))} (eval, calibration, tensor-parallel)")
    setups = ["one", *dict.fromkeys(k for k in args.setups.split(",") if k != "one")]
    if set(setups) - set(SETUPS):
        parser.error(f"--setups: unknown {', '.join(sorted(set(setups) - set(SETUPS)))} ({', '.join(SETUPS)})")
    scratch = Path(tempfile.mkdtemp(prefix="qb-distributed-"))
    env = {**os.environ, "HOME": str(scratch), "XDG_CACHE_HOME": str(scratch / ".cache")}
    try:
        report = {"machine": f"{os.cpu_count()} CPU cores, shared"}
        if "eval" in parts:
            report["eval_sweep"] = eval_sweep(args.prompts, args.precisions, args.rounds, setups, env)
        if "calibration" in parts:
            report["calibration"] = calibration(args.rounds, scratch, env)
        if "tensor-parallel" in parts:
            subprocess.run([*QUANTBENCH, "random-model", "--arch", "klein-4b", "--width-scale", str(args.width_scale),
                            "--out", str(scratch / "klein-4b-shaped")], check=True, capture_output=True, env=env)
            report.update(tensor_parallel=tensor_parallel(scratch, args.steps, args.size, env),
                          klein_4b_full_size_predicted=full_size_prediction(), width_scale=args.width_scale)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not args.json:
        print_table(report, args)
    print(json.dumps(report, indent=2))


def print_phases(setups: dict[str, dict]) -> None:
    """Each process's phases in its setup's best run: wall seconds / CPU seconds (user + system, all threads)."""
    columns = [(name, r) for name, where in setups.items() for r in where["ranks"]]
    names = list(dict.fromkeys(p for _, r in columns for p in r["phases"]))
    keys = {label: key for key, (label, *_) in SETUPS.items()}
    heads = [keys[name] for name, _ in columns]
    labels = [f"rank {r['rank']} of {r['size']}" for _, r in columns]
    print("\nwhere each process's time went (best run): wall s / CPU s (user + system, all threads)")
    print(f"{'':<16}" + "".join(f"{h:>18}" for h in heads))
    print(f"{'phase':<16}" + "".join(f"{label:>18}" for label in labels))
    for phase in names:
        cells = [r["phases"].get(phase) for _, r in columns]
        print(f"{phase:<16}" + "".join(f"{c['wall']:>9.2f}/{c['user'] + c['sys']:<8.2f}" if c else f"{'-':>18}"
                                       for c in cells))
    print(f"{'BLAS threads':<16}" + "".join(f"{str(r.get('blas_threads')):>18}" for _, r in columns))
    print(f"{'cores':<16}" + "".join(f"{','.join(map(str, r.get('cores') or [])) or '-':>18}" for _, r in columns))
    print("launcher CPU s: " + ", ".join(f"{name} {where['launcher_cpu']:.2f}" for name, where in setups.items()))


def print_table(report: dict, args) -> None:
    if "eval_sweep" in report:
        e = report["eval_sweep"]
        print(f"eval sweep, demo-turbo, {e['prompts']} prompts x {','.join(e['precisions'])} ({e['pictures']} pictures), "
              f"best of {args.rounds}: " + ", ".join(f"{name} {seconds:.1f} s ({e['ratio_over_1_process'][name]:.2f}x)"
                                                     for name, seconds in e["best_wall_seconds"].items())
              + "; the one process's report: " + ", ".join(f"{label} {'same' if same else 'DIFFERENT'}"
                                                         for label, same in e["same_results"].items() if label != "1 process"))
        print_phases(e["phases_of_best_run"])
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
