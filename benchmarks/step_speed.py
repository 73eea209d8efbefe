"""Seconds per denoising step of a FLUX.2 transformer, unquantized against 8 and 4 bits, and the FLOP bound.

Loads only the transformer (random prompt features stand in for the text encoder's: the step's cost
does not depend on their values), one precision at a time, and times `--steps` transformer passes
at `--size`, in alternating rounds (unquantized, 8, 4, then unquantized, 4, 8, ...: the quantized
precisions in reverse order every other round) so that a shared machine's drift, and whatever running
after another model leaves behind, hits every precision alike; the ratios come from the same round. The FLOP bound is
the step's matmul FLOPs (every Linear layer and the two attention products) at the float32 matmul
speed this process measures on a Linear-sized product. With --profile, each precision's last step
is also split into matmul, dequantization, attention, norm, RoPE and elementwise time per block type
(see core/profile.py). Each step's minor page faults (fresh pages the kernel mapped and zeroed) and the
process's RSS after the steps are reported too; QUANTBENCH_MALLOC=glibc runs with glibc's own malloc
settings instead of the engine's (core/cpu_blas.py), for comparing the two in separate runs. With --serial, each quantized step is followed by the same step with every
slice dequantized on the compute stream (the dense path before it dequantized ahead). With --lazy,
each quantized step is followed by the same step with each layer's slices left to one lazy graph (the
dense path before each slice was evaluated with the next one's dequantization). With --ahead, each
quantized step is followed by the same step with each slice dequantized ahead on one stream while BLAS
multiplies on every thread (the dense path before its lanes of one-thread BLAS). With --attention-in-turn, each
step is followed by the same step with attention's chunks of queries one after another (the CPU attention
before its lanes). With --attention-ops, each step is followed by the same step with attention by MLX's ops
(the CPU attention before its C kernel). With --elementwise-ops, each step is followed by the same step with
the activations, the queries' and keys' norms and rotary embedding and the parallel blocks' concatenation by MLX's
ops (the CPU step before its elementwise kernel). With --four-blocks, each quantized step is followed by the same step
with the tile kernel's output shared out in at least four blocks a thread (tried; two are kept). With --blas-tiles,
each quantized step is followed by the same step with each dequantized tile multiplied by OpenBLAS's sgemm (the tile
kernel before its own products). With
--concatenated,
each quantized step is followed by the same step with the slices' products concatenated once all are
done (the dense path before it wrote each into the output as it was done). With
--compiled-affine, each quantized step is followed by the same step with the dequantization's affine
pass as one mx.compile'd kernel (the dense path before it used MLX's elementwise ops). With
--blocks D,S, the transformer keeps only its first D double-stream and S single-stream blocks (full width,
a fraction of the depth and memory: a real step's every kind of work where the whole model does not
fit the machine; the folder is read through a view of it with that config). With
--keep-dequantized, each quantized precision runs a second time, loaded afresh, with that many bytes of
its dequantized weights kept (memory for speed; its load seconds include making them). With --interleaved,
every precision is loaded once and all are held, and each round runs their steps back to back: the host's
drift over minutes (10-15% on a shared VM) then hits every precision alike, and none runs in memory another
model has just left (it needs the precisions' memory together: at full size, unquantized with one other).

    python benchmarks/step_speed.py --model DIR [--size 256] [--steps 2] [--rounds 2] [--precisions none,8,4]
        [--profile] [--plain] [--slices] [--serial] [--compiled-affine] [--lazy] [--ahead] [--concatenated]
        [--attention-in-turn] [--attention-ops] [--elementwise-ops] [--four-blocks] [--blas-tiles] [--blocks D,S] [--keep-dequantized GB|all]
        [--interleaved] [--json]

Full-size Klein-4B (`quantbench random-model --arch klein-4b`) needs about 16 GB for the unquantized
run: run it alone (on the shared machine, under `flock /tmp/qb-heavy.lock`).
"""

from __future__ import annotations

import gc
import json
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import quantbench.core  # noqa: F401  (OpenBLAS under MLX first)
import mlx.core as mx
import numpy as np
import psutil

from quantbench.core.blocks import attention as attention_module, elementwise_kernel, fast_math
from quantbench.core.cpu_blas import heap_served, malloc_setting
from quantbench.core.component_loading import ComponentLoader
from quantbench.core.errors import QuantbenchError
from quantbench.core.families import family_for_folder
from quantbench.core.families.flux2.transformer import image_position_ids, text_position_ids
from quantbench.core.generation import default_compute_dtype
from quantbench.core.profile import profiling
from quantbench.cli.arguments import dequantized_budget
from quantbench.core.quant import as_spec, dense, parse_spec as parse_bits, quantized_matmul_kind, tile_kernel
from quantbench.core.quant.cost import bits_per_weight
from quantbench.cli import arguments
from quantbench.cli.main import OneLineParser
from quantbench.core import numbers

import dense_slices  # noqa: E402  (this folder: the affine pass before, for --compiled-affine)

TEXT_TOKENS = 512


def step_flops(config: dict, tokens: int) -> float:
    """Matmul FLOPs of one pass: 2 x tokens x every Linear weight, plus QK^T and PV in each block."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    hidden = int(inner * config.get("mlp_ratio", 3.0))
    double = 2 * (4 * inner * inner + 3 * inner * hidden)  # image and text streams: qkv+out, SwiGLU in+out
    single = inner * (3 * inner + 2 * hidden) + (inner + hidden) * inner
    linear = config["num_layers"] * double + config["num_single_layers"] * single
    attention = (config["num_layers"] + config["num_single_layers"]) * 4 * tokens * tokens * inner
    return 2 * tokens * linear + attention


def matmul_gflops(tokens: int, inner: int, repeats: int = 3) -> float:
    """float32 (tokens x inner) @ (inner x 3 inner): a Linear layer's product at this step's size."""
    a, b = mx.random.normal((tokens, inner)), mx.random.normal((inner, 3 * inner))
    mx.eval(a, b, a @ b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - started)
    return 2 * tokens * inner * 3 * inner / best / 1e9


@contextmanager
def plain_step():
    """The step as it was before the compiled functions, the CPU's attention by groups of heads and
    fast_math's exp: MLX's own softmax and activations, uncompiled, all heads at once."""
    whole, on_cpu = attention_module.CACHE_SCORES, fast_math.on_cpu
    attention_module.CACHE_SCORES = 1 << 28  # every head at once, as mx.fast's CPU attention
    fast_math.on_cpu = lambda: False
    mx.disable_compile()
    try:
        yield
    finally:
        mx.enable_compile()
        attention_module.CACHE_SCORES, fast_math.on_cpu = whole, on_cpu


@contextmanager
def swapped(owner, name: str, value):
    """`owner.name` set to `value` for the block, then back to what it was: the dense path in one of its
    earlier forms."""
    kept = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, kept)


@contextmanager
def kernel_off(module, switch: str, name: str | None = None, value=None, owner=None):
    """`module.switch` False (one of the C kernels off), with `owner.name` (owner: the module unless given) set to
    `value` when given: the path the kernel replaced, in one of its earlier forms."""
    with swapped(module, switch, False):
        if name is None:
            yield
        else:
            with swapped(owner or module, name, value):
                yield


def in_slices(name: str | None = None, value=None, owner=dense):
    """The slices (the tile kernel off): the quantized layers' CPU path before it."""
    return kernel_off(dense, "TILE_KERNEL", name, value, owner)


def in_attention_ops(name: str | None = None, value=None):
    """Attention by MLX's ops (the attention kernel off): the CPU attention before it."""
    return kernel_off(attention_module, "KERNEL", name, value)


# The quantized step's earlier forms, each timed right after the default step when asked for: a shared
# machine's drift hits both alike.
BEFORE = {  # name: (the form, its label in the table, what it is, for --help)
    "slices": (lambda: in_slices(), "slices (before)",
               "each quantized layer dequantized a slice of rows at a time into MLX arrays, then multiplied in "
               "lanes (the CPU path before the tile kernel)"),
    "serial": (lambda: in_slices("DEQUANTIZE_AHEAD", False), "serial dequantization",
               "every slice dequantized on the compute stream (the dense path before it dequantized ahead on a "
               "stream of its own)"),
    "compiled_affine": (lambda: in_slices("_affine", dense_slices.compiled_affine), "compiled affine (before)",
                        "the dequantization's affine pass as one compiled kernel (the dense path before it used "
                        "MLX's elementwise ops)"),
    "lazy": (lambda: in_slices("_evaluated_product", dense.DenseQuantizedLinear._lazy_product,
                               dense.DenseQuantizedLinear),
             "one lazy graph a layer (before)", "each layer's slices left to one lazy graph (the dense path before "
             "each slice's product was evaluated with the next one's dequantization)"),
    "concatenated": (lambda: in_slices("IN_PLACE_OUTPUT", False), "concatenated output (before)",
                     "the slices' products concatenated once all are done (the dense path before it wrote each "
                     "into the output as it was done)"),
    "attention_in_turn": (lambda: in_attention_ops("lane_count", lambda: 1),
                          "attention's calls in turn (before)",
                          "attention's chunks of queries one after another (the CPU attention before its lanes)"),
    "blas_tiles": (lambda: swapped(tile_kernel, "PRODUCTS", False), "OpenBLAS's sgemm a tile (before)",
                   "each dequantized tile multiplied by a one-thread OpenBLAS sgemm (the tile kernel before its own "
                   "AVX-512 products)"),
    "four_blocks": (lambda: swapped(tile_kernel, "BLOCKS_A_THREAD", 4), "four blocks a thread (tried)",
                    "the tile kernel's output shared out in at least four blocks a thread (tried; two are kept)"),
    "attention_ops": (lambda: in_attention_ops(), "attention by MLX's ops (before)",
                      "attention by MLX's ops in lanes (the CPU attention before its C kernel)"),
    "elementwise_ops": (lambda: kernel_off(elementwise_kernel, "KERNEL"), "elementwise by MLX's ops (before)",
                        "the activations, the queries' and keys' norms and rotary embedding, and the parallel "
                        "blocks' concatenation by MLX's ops, one thread a pass (the CPU step before its "
                        "elementwise kernel)"),
    "ahead": (lambda: in_slices("LANES", False), "dequantized ahead, not in lanes (before)",
              "each slice dequantized ahead on one stream while BLAS multiplies on every thread (the dense path "
              "before its lanes)"),
}


def timed_step(transformer, x, txt, sigma, rope, peaks: list[int] | None = None,
               faults: list[int] | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one transformer pass; its MLX peak above the resident weights goes to `peaks`,
    the minor page faults it took (fresh memory the kernel mapped and zeroed) to `faults`."""
    resident = mx.get_active_memory()
    mx.reset_peak_memory()
    faults0 = _minor_faults()
    wall0, cpu0 = time.perf_counter(), _cpu()
    mx.eval(transformer(x, txt, sigma, rope))
    wall, used = time.perf_counter() - wall0, _cpu() - cpu0
    if peaks is not None:
        peaks.append(mx.get_peak_memory() - resident)
    if faults is not None:
        faults.append(_minor_faults() - faults0)
    return wall, used


def load_precision(folder: Path, bits: int | None, keep: float = 0.0) -> dict:
    """The transformer at one precision, with what timing it needs: its load seconds, the dequantized bytes
    kept, and the step's inputs."""
    dtype = default_compute_dtype()
    loader = ComponentLoader(family_for_folder(folder), folder, dtype, bits, None, quantized_matmul_kind("auto"))
    started = time.perf_counter()
    transformer = loader.transformer()
    kept = dense.keep_dequantized(transformer, keep, dtype) if keep and bits is not None else 0
    return {"transformer": transformer, "bits": bits, "kept": kept, "dtype": dtype,
            "load_seconds": time.perf_counter() - started}


def time_precision(loaded: dict, size: int, steps: int, profile: bool, plain: bool = False,
                   before: tuple[str, ...] = ()) -> dict:
    """`steps` timed passes of a loaded transformer (load_precision), and the earlier forms asked for."""
    transformer, bits, kept, dtype = loaded["transformer"], loaded["bits"], loaded["kept"], loaded["dtype"]
    config = asdict(transformer.config)
    side = size // 16
    rng = np.random.default_rng(0)
    x = mx.array(rng.standard_normal((1, side * side, transformer.config.in_channels), dtype=np.float32)).astype(dtype)
    txt = mx.array(rng.standard_normal((1, TEXT_TOKENS, transformer.config.joint_attention_dim),
                                       dtype=np.float32)).astype(dtype)
    rope = transformer.rope(text_position_ids(TEXT_TOKENS), image_position_ids(side, side))
    seconds, cpu, plain_seconds, plain_cpu, peaks, faults = [], [], [], [], [], []
    earlier = {name: ([], [], [], []) for name in before  # the dense path's forms only where it runs
               if bits is not None or name.startswith(("attention", "elementwise"))} if not kept else {}
    with heap_served():  # as generate's denoise loop
        for i in range(steps):
            sigma = mx.array([1.0 - i / steps], dtype=dtype)
            wall, used = timed_step(transformer, x, txt, sigma, rope, peaks, faults)
            seconds.append(wall)
            cpu.append(used)
            if plain:  # the same step the old way, right after: a shared machine's drift hits both alike
                with plain_step():
                    wall, used = timed_step(transformer, x, txt, sigma, rope)
                plain_seconds.append(wall)
                plain_cpu.append(used)
            for name, (walls, cpus, its_peaks, its_faults) in earlier.items():
                with BEFORE[name][0]():
                    wall, used = timed_step(transformer, x, txt, sigma, rope, its_peaks, its_faults)
                walls.append(wall)
                cpus.append(used)
        split = None
        if profile:
            with profiling(transformer) as recorded:
                mx.eval(transformer(x, txt, mx.array([0.5], dtype=dtype), rope))
            split = recorded
        rss_after_steps = psutil.Process().memory_info().rss
    label = "unquantized" if bits is None else f"{bits}-bit" + (f" kept {kept / 2 ** 30:.1f} GB" if kept else "")
    row = {"precision": label, "kept_dequantized_bytes": kept, "dtype": str(dtype).rsplit(".", 1)[-1],
           "load_seconds": loaded["load_seconds"], "step_seconds": seconds, "step_cpu_seconds": cpu,
           "plain_step_seconds": plain_seconds or None, "plain_step_cpu_seconds": plain_cpu or None,
           "step_peak_above_resident": max(peaks), "step_minor_faults": faults,
           "rss_after_steps": rss_after_steps,
           "resident_bytes": mx.get_active_memory(),
           "config": config, "profile": split.to_dict() if split else None, "_profile": split}
    for name in BEFORE:
        walls, cpus, its_peaks, its_faults = earlier.get(name, (None, None, [], None))
        row |= {f"{name}_step_seconds": walls, f"{name}_step_cpu_seconds": cpus, f"{name}_step_minor_faults": its_faults,
                f"{name}_step_peak_above_resident": max(its_peaks, default=None)}
    return row


def bytes_a_weight(bits: int | None) -> float:
    """A weight's bytes held at `bits` (None: unquantized, in the compute dtype), scales and biases counted."""
    if bits is None:
        return default_compute_dtype().size
    return bits_per_weight(as_spec(bits)) / 8


def hold_every_precision(folder: Path, precisions: list, parser) -> list[dict]:
    """Every precision loaded once, for --interleaved; before each after the first, its memory is guessed from the
    first one's (the bytes a weight at each precision; kept dequantized weights at most the unquantized model's)
    and a load the free memory cannot hold is refused, one line, instead of the kernel's OOM killer ending the run."""
    held, unquantized_bytes = [], None
    for bits, keep in precisions:
        if unquantized_bytes is not None:
            needed = unquantized_bytes * bytes_a_weight(bits) / bytes_a_weight(None) + min(keep, unquantized_bytes)
            free = psutil.virtual_memory().available - (1 << 30)
            if needed > free:
                label = ("unquantized" if bits is None else f"{bits}-bit") + (" kept" if keep else "")
                parser.error(f"--interleaved holds every precision at once: {label} would need about "
                             f"{needed / 2 ** 30:.1f} GB more and {max(free, 0) / 2 ** 30:.1f} GB is free (beside 1 GB"
                             f" kept spare); ask for fewer precisions")
        before = mx.get_active_memory()
        held.append(load_precision(folder, bits, keep))
        if unquantized_bytes is None:
            unquantized_bytes = (mx.get_active_memory() - before) * bytes_a_weight(None) / bytes_a_weight(bits)
    return held


def run_precision(folder: Path, bits: int | None, size: int, steps: int, profile: bool,
                  plain: bool = False, keep: float = 0.0, before: tuple[str, ...] = ()) -> dict:
    """One precision loaded, timed and freed before the next is loaded."""
    loaded = load_precision(folder, bits, keep)
    row = time_precision(loaded, size, steps, profile, plain, before)
    loaded.clear()
    gc.collect()
    mx.clear_cache()
    return row


def shallow_view(folder: Path, double: int, single: int, into: Path) -> Path:
    """`folder` seen through links, its transformer's config cut to the first `double` and `single` blocks
    (the checkpoint's other blocks are left unread)."""
    view = into / folder.name
    (view / "transformer").mkdir(parents=True)
    for entry in folder.iterdir():
        if entry.name != "transformer":
            (view / entry.name).symlink_to(entry.resolve())
    for entry in (folder / "transformer").iterdir():
        if entry.name != "config.json":
            (view / "transformer" / entry.name).symlink_to(entry.resolve())
    config = json.loads((folder / "transformer" / "config.json").read_text())
    if double > config["num_layers"] or single > config["num_single_layers"]:
        raise ValueError(f"--blocks {double},{single}: the model has {config['num_layers']} double-stream and "
                         f"{config['num_single_layers']} single-stream blocks")
    config.update(num_layers=double, num_single_layers=single)
    (view / "transformer" / "config.json").write_text(json.dumps(config, indent=2))
    return view


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def before_line(row: dict, name: str, base: float, base_cpu: float) -> str:
    """The text for one of the step's earlier forms (BEFORE) timed beside it, or nothing."""
    walls, cpus = row[f"{name}_step_seconds"], row[f"{name}_step_cpu_seconds"]
    if not walls:
        return ""
    label = BEFORE[name][1]
    return (f"  {label} {min(walls):.2f} s (x{min(walls) / base:.3f} of unquantized; cpu {min(cpus):.1f} s, "
            f"x{min(cpus) / base_cpu:.3f}; {min(row[f'{name}_step_minor_faults']) / 1e3:.0f}k minor faults; MLX peak {row[f'{name}_step_peak_above_resident'] / 2 ** 20:.0f} MB)")


def round_order(precisions: list, index: int) -> list:
    """The precisions of round `index`: the first (the base of the ratios) always first, the others in the
    given order in even rounds and reversed in odd ones, so that none always runs right after the same one
    (or last, in a process that has held every model before it)."""
    return precisions if index % 2 == 0 else precisions[:1] + precisions[1:][::-1]


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a FLUX.2 model folder")
    parser.add_argument("--size", type=arguments.dimension("--size"), default=256)
    parser.add_argument("--steps", type=arguments.steps, default=2, help="timed passes per precision and round")
    parser.add_argument("--rounds", type=arguments.rounds, default=2)
    parser.add_argument("--precisions", default="none,8,4")
    parser.add_argument("--profile", action="store_true", help="split the last round's steps by kind of work")
    parser.add_argument("--plain", action="store_true",
                        help="also time each step with MLX's own softmax and activations, without mx.compile and "
                             "with whole-matrix CPU attention (the step before those changes), alternating "
                             "with the default step")
    for name, (_, _, what) in BEFORE.items():
        parser.add_argument(f"--{name.replace('_', '-')}", action="store_true",
                            help=f"also time each step with {what}, alternating")
    parser.add_argument("--keep-dequantized", type=dequantized_budget, default=0.0, metavar="GB|all",
                        help="also run each quantized precision with its dequantized weights kept up to GB (or all; "
                             "generate --keep-dequantized), loaded on its own in the same round")
    parser.add_argument("--blocks", metavar="D,S", help="keep only the first D double-stream and S single-stream "
                                                        "blocks (full width, less depth and memory)")
    parser.add_argument("--interleaved", action="store_true",
                        help="load every precision once and hold them all, each round's steps back to back (the "
                             "precisions' memory together: at full size, two at a time)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.blocks:
        try:
            double, single = (numbers.whole(v) for v in args.blocks.split(","))
        except ValueError:
            parser.error("--blocks takes two whole numbers: D,S")
        if min(double, single) < 0 or double + single == 0:
            parser.error("--blocks takes two whole numbers, not both 0 and neither below 0")
        views = tempfile.TemporaryDirectory(prefix="step-speed-")
        try:
            args.model = shallow_view(args.model, double, single, Path(views.name))
        except (OSError, ValueError, KeyError) as exc:
            parser.error(str(exc))
    try:  # a folder that is no model, or a precision that is none: one line, before any loading
        family_for_folder(args.model)
        precisions = [(parse_bits(p), 0.0) for p in args.precisions.split(",")]
    except QuantbenchError as exc:
        parser.error(str(exc))
    if args.keep_dequantized:
        precisions += [(bits, args.keep_dequantized) for bits, _ in precisions if bits is not None]
    before = tuple(name for name in BEFORE if getattr(args, name))
    held = hold_every_precision(args.model, precisions, parser) if args.interleaved else None
    rounds = []
    for r in range(args.rounds):
        rows = []
        for index in round_order(list(range(len(precisions))), r):
            bits, keep = precisions[index]
            print(f"round {r + 1}: {bits or 'unquantized'}{' kept' if keep else ''} ...", file=sys.stderr, flush=True)
            last = args.profile and r == args.rounds - 1
            rows.append(time_precision(held[index], args.size, args.steps, last, args.plain, before) if held
                        else run_precision(args.model, bits, args.size, args.steps, last, args.plain, keep, before))
        rounds.append(rows)
    config = rounds[0][0]["config"]
    tokens = TEXT_TOKENS + (args.size // 16) ** 2
    flops = step_flops(config, tokens)
    gflops = matmul_gflops(tokens, config["num_attention_heads"] * config["attention_head_dim"])
    report = {"model": str(args.model), "size": args.size, "tokens": tokens, "step_tflop": flops / 1e12,
              "malloc": malloc_setting(), "interleaved": args.interleaved,
              "matmul_gflops": gflops, "flop_bound_seconds": flops / gflops / 1e9, "rounds": []}
    lines = [f"{args.model.name}, {args.size}x{args.size} ({tokens} tokens), {flops / 1e12:.2f} TFLOP per step; "
             f"float32 matmul here {gflops:.0f} GFLOP/s -> bound {flops / gflops / 1e9:.2f} s/step; "
             f"freed memory: {malloc_setting()} (QUANTBENCH_MALLOC)"
             + ("; every precision held, steps back to back" if args.interleaved else "")]
    for i, rows in enumerate(rounds):
        base, base_cpu = min(rows[0]["step_seconds"]), min(rows[0]["step_cpu_seconds"])
        entry = []
        for row in rows:
            best = min(row["step_seconds"])
            entry.append({k: v for k, v in row.items() if k not in ("config", "_profile")}
                         | {"best_step_seconds": best, "over_unquantized": best / base,
                            "cpu_over_unquantized": min(row["step_cpu_seconds"]) / base_cpu,
                            "over_flop_bound": best / report["flop_bound_seconds"]})
            lines.append(f"round {i + 1}  {row['precision']:>12} ({row['dtype']})  best step {best:7.2f} s  "
                         f"x{best / base:.3f} of unquantized  x{best / report['flop_bound_seconds']:.2f} of the bound"
                         f"  (cpu {min(row['step_cpu_seconds']):.1f} s, x{min(row['step_cpu_seconds']) / base_cpu:.3f}; load {row['load_seconds']:.1f} s)"
                         + (f"  plain step {min(row['plain_step_seconds']):.2f} s (cpu "
                            f"{min(row['plain_step_cpu_seconds']):.1f} s): default x"
                            f"{best / min(row['plain_step_seconds']):.3f}" if row["plain_step_seconds"] else "")
                         + f"  {min(row['step_minor_faults']) / 1e3:.0f}k minor faults, RSS after "
                           f"{row['rss_after_steps'] / 2 ** 30:.2f} GB"
                         + f"  MLX peak {row['step_peak_above_resident'] / 2 ** 20:.0f} MB above the resident "
                           f"{row['resident_bytes'] / 2 ** 30:.2f} GB"
                         + "".join(before_line(row, name, base, base_cpu) for name in BEFORE))
        report["rounds"].append(entry)
    for row in rounds[-1]:
        if row["_profile"] is not None:
            lines += ["", f"profile, {row['precision']}:"] + row["_profile"].table()
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
