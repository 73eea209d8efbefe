"""The memory model's prediction against MLX's measured peaks, phase by phase: a table, and the denoising figure
per token each family's runs imply.

For every family (a narrowed random model of its real shapes, `random-model --arch A --width-scale W`; FLUX.1, which
random-model lacks, the tests' tiny reference pipeline with a transformer of FLUX.1's head size and a width-scaled
head count), precision (unquantized, 8-bit, 4-bit), mode (default, --low-memory), size and CPU elementwise kernel
(on, off: QUANTBENCH_ELEMENTWISE_KERNEL=off), `quantbench generate --json` runs in a process of its own (--runs
times; the largest measured peak is kept, as MLX's peak moves with the machine's load) and its predicted phase peaks
stand beside the measured ones; the table marks a phase more than 10% off.

The denoise phase's activations are a figure per token and inner width (Family.denoise_per_token,
denoise_layerwise_per_token, denoise_kernel_per_token; else the backend's) times batch x tokens x inner width x
bytes. Each run also reports the figure its prediction used and how many bytes one unit of it is there ("unit"),
so `measured - predicted = (true figure - used) x unit + constant`: across the sizes of one group (family,
precision, mode, kernel) the slope of (measured - predicted) over the unit is what the figure is off by, the
constant what the rest of the phase is off by. `--fit` prints that per group.

    python benchmarks/memory_model.py [--families flux1,qwen-image-2.1,qwen-image,z-image,klein-4b]
        [--scale 0.0625] [--sizes 256,512] [--precisions none,8,4] [--modes default,low-memory]
        [--kernels on,off] [--runs 2] [--work DIR] [--fit] [--json OUT]
    python benchmarks/memory_model.py --table OUT [OUT ...] [--fit]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red star over a blue sky"
PHASES = ("encode", "denoise", "decode")
OFF_BY = 0.10  # a phase predicted further off than this is marked


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def flux1_folder(out: Path, scale: float) -> Path:
    """A FLUX.1 [schnell] pipeline: the tests' tiny reference components (tests/reference/flux1.py) with a
    transformer of FLUX.1's head size (128) and rotary axes, 24 x scale heads, 2 double and 4 single blocks."""
    if (out / "model_index.json").exists():
        return out
    sys.path.insert(0, str(ROOT / "tests"))
    from reference.flux1 import NARROWED_TRANSFORMER, build_tiny_flux1

    staging = out.with_name(out.name + ".partial")
    build_tiny_flux1(staging, dev=False, transformer={**NARROWED_TRANSFORMER,
                                                      "num_attention_heads": max(1, round(24 * scale))})
    staging.rename(out)
    return out


def model_folder(arch: str, scale: float, work: Path) -> Path:
    out = work / f"{arch}-{scale}"
    if arch == "flux1":
        return flux1_folder(out, scale)
    if not (out / "model_index.json").exists():
        from quantbench.core.random_model import write_random_model

        write_random_model(out, arch, width_scale=scale, overwrite=True)
    return out


def run_once(folder: Path, size: int, bits: str, mode: str, kernel: str, work: Path) -> dict:
    """One `generate --json` in a process of its own (this script's --child), with what its prediction used."""
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        report = Path(scratch) / "report.json"
        command = [sys.executable, __file__, "--child", str(report), "generate", "--model", str(folder), "--prompt",
                   PROMPT, "--width", str(size), "--height", str(size), "--steps", "1", "--out",
                   str(Path(scratch) / "image.png"), "--json", "--quiet",
                   *(["-q", bits] if bits != "none" else []), *(["--low-memory"] if mode == "low-memory" else [])]
        env = {**os.environ, "HOME": scratch, **({"QUANTBENCH_ELEMENTWISE_KERNEL": "off"} if kernel == "off" else {})}
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"{folder.name} {size} {bits} {mode} kernel {kernel}: {proc.stderr.strip()[-2000:]}")
        return json.loads(report.read_text())


def child(report: Path, argv: list[str]) -> None:
    """Run the CLI here (a process of its own) and write its measured and predicted phase peaks, with the denoise
    figure its prediction used and the bytes one unit of that figure is in this run."""
    import contextlib
    import io

    import quantbench.core  # noqa: F401  (first: the fast BLAS under MLX)
    from quantbench.cli.main import main
    from quantbench.core import generate
    from quantbench.core.fit import _plan, catalog_entry_for
    from quantbench.core.memory_model import activations, predict

    seen = {}
    check_fit = generate.check_fit

    def spy(plan, memory, *args, **kwargs):
        seen["shape"], seen["plan"] = generate.run_shape(plan, memory), plan
        return check_fit(plan, memory, *args, **kwargs)

    generate.check_fit = spy
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    if code not in (0, None):
        raise SystemExit(code)
    summary = json.loads(out.getvalue())
    plan, shape = seen["plan"], seen["shape"]
    entry = catalog_entry_for(plan.settings.model, plan.folder, shape.text_encoder_layers)
    memory_plan = _plan(plan.folder, shape, summary["predicted"].get("backend") or _backend(), entry)
    used = []
    figure = activations.transformer_per_token

    def recorded(*args, **kwargs):
        used.append(figure(*args, **kwargs))
        return used[-1]

    activations.transformer_per_token = recorded
    denoise = predict(entry, memory_plan).phases["denoise"]
    activations.transformer_per_token = lambda *args, **kwargs: used[0] + 1
    unit = predict(entry, memory_plan).phases["denoise"] - denoise
    report.write_text(json.dumps({
        "measured": summary["phase_peaks"], "predicted": summary["predicted"]["phase_peaks"], "figure": used[0],
        "unit": unit, "replayed_denoise": denoise, "elementwise_kernel": summary["load"].get("cpu_elementwise_kernel"),
        "text_encoder_quantize": summary.get("text_encoder_quantize")}))


def _backend() -> str:
    from quantbench.core.hardware import detect

    return detect().backend


def measure(args) -> list[dict]:
    rows = []
    for arch in args.families:
        folder = model_folder(arch, args.scale, args.work)
        for bits in args.precisions:
            for mode in args.modes:
                for kernel in args.kernels:
                    for size in args.sizes:
                        runs = [run_once(folder, size, bits, mode, kernel, args.work) for _ in range(args.runs)]
                        first = runs[0]
                        if first["replayed_denoise"] != first["predicted"]["denoise"]:
                            raise SystemExit(f"{arch}: the replayed prediction {first['replayed_denoise']} is not "
                                             f"generate's {first['predicted']['denoise']}")
                        measured = {p: max(r["measured"].get(p, 0) for r in runs) for p in PHASES}
                        row = {"family": arch, "scale": args.scale, "precision": bits, "mode": mode, "kernel": kernel,
                               "size": size, "measured": measured, "predicted": first["predicted"],
                               "figure": first["figure"], "unit": first["unit"]}
                        rows.append(row)
                        log(line(row))
    return rows


def ratio(row: dict, phase: str) -> float:
    return row["predicted"][phase] / row["measured"][phase] - 1


def line(row: dict) -> str:
    cells = [f"{row['family']:<15}", f"{row['precision']:>4}", f"{row['mode']:<10}", f"{row['kernel']:>3}",
             f"{row['size']:>4}"]
    for phase in PHASES:
        off = ratio(row, phase)
        cells.append(f"{row['predicted'][phase] / 2**20:7.1f}/{row['measured'][phase] / 2**20:7.1f} "
                     f"({off:+6.1%}){' !' if abs(off) > OFF_BY else '  '}")
    return " ".join(cells)


def table(rows: list[dict]) -> str:
    head = (f"{'family':<15} {'bits':>4} {'mode':<10} {'ker':>3} {'size':>4} "
            + " ".join(f"{p + ' MiB pred/meas':<27}" for p in PHASES))
    return "\n".join([head, *(line(r) for r in rows)])


def fits(rows: list[dict]) -> str:
    """Per group, the denoise figure its sizes imply: used + slope of (measured - predicted) over the unit."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["family"], row["precision"], row["mode"], row["kernel"]), []).append(row)
    out = [f"{'family':<15} {'bits':>4} {'mode':<10} {'ker':>3} {'used':>6} {'implied':>8} {'constant MiB':>12} "
           "one size alone"]
    for (family, bits, mode, kernel), group in groups.items():
        xs = [r["unit"] for r in group]
        ys = [r["measured"]["denoise"] - r["predicted"]["denoise"] for r in group]
        used = group[0]["figure"]
        alone = ", ".join(f"{r['size']}: {used + y / x:.1f}" for r, x, y in zip(group, xs, ys))
        if len(group) < 2 or max(xs) == min(xs):
            out.append(f"{family:<15} {bits:>4} {mode:<10} {kernel:>3} {used:6.1f} {'-':>8} {'-':>12} {alone}")
            continue
        mx_, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx_) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx_) ** 2 for x in xs)
        constant = my - slope * mx_
        out.append(f"{family:<15} {bits:>4} {mode:<10} {kernel:>3} {used:6.1f} {used + slope:8.1f} "
                   f"{constant / 2**20:12.2f} {alone}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(Path(argv[1]), argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    listed = lambda kind=str: (lambda text: [kind(part) for part in text.split(",") if part])  # noqa: E731
    parser.add_argument("--families", type=listed(), default=["flux1", "qwen-image-2.1", "qwen-image", "z-image",
                                                               "klein-4b"])
    parser.add_argument("--scale", type=float, default=0.0625)
    parser.add_argument("--sizes", type=listed(int), default=[256, 512])
    parser.add_argument("--precisions", type=listed(), default=["none", "8", "4"])
    parser.add_argument("--modes", type=listed(), default=["default", "low-memory"])
    parser.add_argument("--kernels", type=listed(), default=["on", "off"])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "quantbench-memory-model")
    parser.add_argument("--fit", action="store_true", help="print the denoise figure each group's sizes imply")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--table", type=Path, nargs="+", metavar="JSON",
                        help="print the table (and --fit) of rows written before by --json, running nothing; a row "
                             "of a later file replaces the same run's of an earlier one")
    args = parser.parse_args(argv)
    if args.table:
        rows = {}
        for path in args.table:
            for row in json.loads(path.read_text()):
                rows[tuple(row[k] for k in ("family", "scale", "precision", "mode", "kernel", "size"))] = row
        rows = list(rows.values())
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        rows = measure(args)
    print(table(rows))
    if args.fit:
        print()
        print(fits(rows))
    if args.json:
        from quantbench.core.atomic import write_json

        write_json(args.json, rows)


if __name__ == "__main__":
    main()
