"""The quantized CPU path's Linear layers against unquantized ones, at a FLUX.2 transformer's real shapes.

A denoising step's Linear layers are every (input, output, tokens) shape of the transformer's blocks,
weighted by how many of them a step runs: in a double-stream block the image stream's projections see
the image tokens and the text stream's see the prompt's 512, the single-stream blocks see both. Each
shape is built once, at random, and timed unquantized (one BLAS product) and through the dense path
(`core/quant/dense.py`: dequantize a slice of rows, multiply) at 8 and 4 bits, in alternating rounds
so that a shared machine's drift hits every variant alike. `--compare streams` (the default) times the
path as it is (each slice dequantized ahead on a stream of its own), the same slices dequantized on the
compute stream (before), and the layer with its dequantized weight kept (`generate --keep-dequantized`);
`--compare slices` times the slices the path uses now against the earlier rule (4 MB of dense weight a
slice, however few rows that is); `--compare rows` times them against slices of 2 and 4 times as many
rows (each slice's product packs the input again, so fewer slices pack it less often); `--compare dequantize` times the path (dequantized ahead) with its
affine pass as MLX's elementwise ops (now) against one compiled pass (before), and each alone (on
the layer's slices in turn, as the path reads them, and on one slice again, already in the cache);
`--compare evaluate` times each slice's product evaluated together with the next slice's
dequantization (now) against the layer's slices left to one lazy graph, each slice's dequantization
chained to the product two slices before (before; what the path still does inside mx.compile);
`--compare lanes` times the slices in lanes of one-thread BLAS (now) against each dequantized ahead while
BLAS multiplies on every thread (before); `--compare output` times each slice's product written into
the layer's output as it is done (now) against the products concatenated once all are done (before);
`--compare parts` splits the path's time: its sliced products alone (the same slices, lanes and output
writes, each slice cut from the dense weight) and its dequantizations alone (the same slices in the
same lanes, no product), against the whole path; `--compare ahead` queues one group of slices (a
slice a lane) beyond the group whose products are being written (now) against two (every variant above
is the slices, whatever the path does now); `--compare kernel` times the tile kernel
(`core/quant/tile_kernel.c`: each thread dequantizes a tile inside its share of the product) against the
slices; `--compare tiles` times the tile kernel at several tile sizes; `--compare products` times the tile
kernel's own AVX-512 products (now) against a one-thread OpenBLAS sgemm on each dequantized tile (before). One
layer is in memory at a time (at most about 0.5 GB for Klein 4B, 1.5 GB with its dense copy kept), so
it runs where a whole full-size step cannot.

Reports CPU seconds (getrusage, all threads; robust to other jobs), wall seconds per step's worth of
Linear work, each variant's ratio to unquantized, the largest MLX peak of one layer call above
what was resident before it (the dense copies and outputs in flight), and a step's worth of minor
page faults (fresh memory the kernel mapped and zeroed). Last, whether two CPU streams
run at once on this MLX: two halves of a dequantization on one stream, then on two.

    python benchmarks/dense_slices.py [--config transformer/config.json] [--size 256] [--rounds 3]
        [--compare streams|slices|rows|dequantize|evaluate|lanes|output|parts|ahead|kernel|tiles|products] [--layer IN,OUT,TOKENS] [--json]
"""

from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import quantbench.core  # noqa: F401  (OpenBLAS under MLX first)
import mlx.core as mx
import mlx.nn as nn

from quantbench.core import cpu_lanes
from quantbench.core.quant import dense, tile_kernel
from quantbench.cli import arguments
from quantbench.cli.main import OneLineParser
from quantbench.core import numbers
from quantbench.core.errors import CheckpointError, QuantbenchError
from quantbench.core.model_files import read_json_object

TEXT_TOKENS = 512
KLEIN_4B = {"num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24, "attention_head_dim": 128,
            "mlp_ratio": 3.0}


def step_config(path: Path) -> dict:
    """The sizes step_layers() reads, from a FLUX.2 transformer's config.json; a file without them is refused."""
    config = read_json_object(path)
    for key in KLEIN_4B:
        value = config.get(key, 3.0 if key == "mlp_ratio" else None)  # step_layers' default ratio
        whole = key != "mlp_ratio"
        least = 0 if key in ("num_layers", "num_single_layers") else 1
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if not number or (value < least if whole else value <= 0) or (whole and value != int(value)):
            wanted = f"a whole number, at least {least}" if whole else "a number above 0"
            raise CheckpointError(f"{path}: {key} should be {wanted} (a FLUX.2 transformer's config.json), "
                                  f"not {value!r}")
    return config


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


@dataclass(frozen=True)
class Variant:
    name: str
    bits: int | None  # None: the unquantized Linear
    min_rows: int = 1  # the dense path's slices: at least this many rows
    ahead: bool = True  # dequantize on a stream of its own (dense.DEQUANTIZE_AHEAD)
    kept: bool = False  # the layer's dequantized weight kept (dense.keep_dequantized)
    compiled_affine: bool = False  # the affine pass as one compiled kernel (before), not MLX's ops
    lazy: bool = False  # the slices left to one lazy graph, chained (before), not evaluated slice by slice
    lanes: bool = True  # the slices in lanes of one-thread BLAS where there are 2-4 threads (dense.LANES)
    in_place: bool = True  # each slice's product written into the output as it is done, not concatenated
    groups_ahead: int = 1  # groups of slices queued in the lanes beyond the one being written (dense.GROUPS_AHEAD)
    part: str = "path"  # path: the whole call; slices: its sliced products alone; dequantize: its dequantizations alone
    tiles: tuple[int, int] | None = None  # the tile kernel (dense.TILE_KERNEL) at (weight rows, inputs) a tile; None: the slices
    products: bool = True  # the tile kernel's own AVX-512 products (tile_kernel.PRODUCTS), not OpenBLAS's sgemm a tile


@cache
def _compiled_affine_for(group_size: int, dtype: mx.Dtype):
    """The dense path's affine pass before: levels * scale + bias in one mx.compile'd kernel."""
    def affine(levels, scales, biases):
        rows = levels.shape[0]
        weight = levels.reshape(rows, -1, group_size).astype(dtype) * scales.astype(dtype)[..., None]
        return (weight + biases.astype(dtype)[..., None]).reshape(rows, -1)
    return mx.compile(affine)


def compiled_affine(levels, scales, biases, group_size, dtype):
    return _compiled_affine_for(group_size, dtype)(levels, scales, biases)


@contextmanager
def path_as(variant: Variant):
    """The dense module set to the variant's slices, stream and affine pass for the duration."""
    layer = dense.DenseQuantizedLinear
    saved = (dense.DENSE_SLICE_MIN_ROWS, dense.DEQUANTIZE_AHEAD, dense._affine, layer._evaluated_product, dense.LANES,
             dense.IN_PLACE_OUTPUT, dense.GROUPS_AHEAD, dense.TILE_KERNEL, tile_kernel.TILE_ROWS, tile_kernel.TILE_INPUTS,
             tile_kernel.WIDE_TILE_ROWS, tile_kernel.PRODUCTS)
    tile_kernel.PRODUCTS = variant.products
    dense.DENSE_SLICE_MIN_ROWS, dense.DEQUANTIZE_AHEAD, dense.LANES = variant.min_rows, variant.ahead, variant.lanes
    dense.IN_PLACE_OUTPUT, dense.GROUPS_AHEAD = variant.in_place, variant.groups_ahead
    dense.TILE_KERNEL = variant.tiles is not None
    if variant.tiles and variant.tiles != (tile_kernel.TILE_ROWS, tile_kernel.TILE_INPUTS):
        # another size than now's: that size at every number of tokens (now's widens its tiles from
        # tile_kernel.WIDE_TILE_TOKENS)
        tile_kernel.TILE_ROWS, tile_kernel.TILE_INPUTS = variant.tiles
        tile_kernel.WIDE_TILE_ROWS = variant.tiles[0]
    if variant.compiled_affine:
        dense._affine = compiled_affine
    if variant.lazy:
        layer._evaluated_product = layer._lazy_product
    try:
        yield
    finally:
        (dense.DENSE_SLICE_MIN_ROWS, dense.DEQUANTIZE_AHEAD, dense._affine, layer._evaluated_product, dense.LANES,
         dense.IN_PLACE_OUTPUT, dense.GROUPS_AHEAD, dense.TILE_KERNEL, tile_kernel.TILE_ROWS,
         tile_kernel.TILE_INPUTS, tile_kernel.WIDE_TILE_ROWS, tile_kernel.PRODUCTS) = saved


def minor_faults() -> int:
    """Minor page faults so far: each is a page of fresh memory the kernel mapped and zeroed."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def slices_alone(layer, x: mx.array, dense_weight: mx.array) -> mx.array:
    """The path's call with every slice cut from `dense_weight` instead of dequantized: the slices' products,
    lanes and output writes, none of the dequantization."""
    saved = dense.dequantize_rows
    dense.dequantize_rows = lambda _layer, start, stop, _dtype, _after=None: dense_weight[start:stop]
    try:
        return layer(x)
    finally:
        dense.dequantize_rows = saved


def dequantize_alone_in_lanes(layer, x: mx.array) -> mx.array:
    """The path's dequantizations of one call, in its lanes and slices, with no product."""
    rows = layer.weight.shape[0]
    step = dense.slice_rows(layer, x.dtype)
    parts = [lambda start=start: dense.dequantize_rows(layer, start, min(start + step, rows), x.dtype)
             for start in range(0, rows, step)]
    cpu_lanes.in_lanes(parts, dense.lane_count(), lambda done: None)
    return mx.array(0)


def timed(layer, x, variant: Variant, dense_weight: mx.array | None = None) -> tuple[float, float, int, int]:
    """(wall, CPU) seconds of one call, its MLX peak above what was resident before it, and its minor faults."""
    call = {"path": lambda: layer(x), "slices": lambda: slices_alone(layer, x, dense_weight),
            "dequantize": lambda: dequantize_alone_in_lanes(layer, x)}[variant.part]
    with path_as(variant):
        mx.eval(call())  # warm: compiled kernels, allocator
        resident = mx.get_active_memory()
        mx.reset_peak_memory()
        faults, cpu, wall = minor_faults(), cpu_seconds(), time.perf_counter()
        mx.eval(call())
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        return wall, cpu, mx.get_peak_memory() - resident, minor_faults() - faults


def variants(compare: str = "streams") -> list[Variant]:
    """Unquantized, then each precision's variants of the dense path."""
    current = dense.DENSE_SLICE_MIN_ROWS
    now = (tile_kernel.TILE_ROWS, tile_kernel.TILE_INPUTS)
    if compare == "kernel":
        per_bits = [("slices (before)", {"min_rows": current}), ("tile kernel (now)", {"tiles": now})]
    elif compare == "products":
        per_bits = [("OpenBLAS's sgemm a tile (before)", {"tiles": now, "products": False}),
                    ("own products (now)", {"tiles": now})]
    elif compare == "tiles":
        per_bits = [(f"tiles {rows}x{inputs}{' (now)' if (rows, inputs) == now else ''}", {"tiles": (rows, inputs)})
                    for rows, inputs in dict.fromkeys((now, (2048, 1536), (2048, 768), (1024, 768), (1024, 3072), (512, 768)))]
    elif compare == "ahead":
        per_bits = [("1 group ahead (now)", {"min_rows": current}),
                    ("2 groups ahead", {"min_rows": current, "groups_ahead": 2})]
    elif compare == "parts":
        per_bits = [("sliced products alone", {"min_rows": current, "part": "slices"}),
                    ("dequantization alone", {"min_rows": current, "part": "dequantize"}),
                    ("the path (now)", {"min_rows": current})]
    elif compare == "output":
        per_bits = [("concatenated (before)", {"min_rows": current, "in_place": False}),
                    ("written in place (now)", {"min_rows": current})]
    elif compare == "lanes":
        per_bits = [("dequantized ahead (before)", {"min_rows": current, "lanes": False}),
                    ("lanes (now)", {"min_rows": current})]
    elif compare == "evaluate":
        per_bits = [("one lazy graph (before)", {"min_rows": current, "lazy": True}),
                    ("evaluated by slice (now)", {"min_rows": current})]
    elif compare == "rows":
        per_bits = [(f"{rows} rows a slice{' (now)' if rows == current else ''}", {"min_rows": rows})
                    for rows in (current, 2 * current, 4 * current)]
    elif compare == "slices":
        per_bits = [("4 MB slices", {"min_rows": 1, "ahead": False}),
                    ("current slices", {"min_rows": current, "ahead": False})]
    elif compare == "dequantize":
        per_bits = [("compiled affine (before)", {"min_rows": current, "compiled_affine": True}),
                    ("affine as ops (now)", {"min_rows": current})]
    else:
        per_bits = [("one stream", {"min_rows": current, "ahead": False}),
                    ("dequantized ahead", {"min_rows": current}),
                    ("dequantized kept", {"min_rows": current, "kept": True})]
    return [Variant("unquantized", None)] + [Variant(f"{bits}-bit {name}", bits, **options)
                                             for bits in (8, 4) for name, options in per_bits]


def measure(config: dict, size: int, rounds: int, compare: str = "streams", log=print,
            layer: tuple[int, int, int] | None = None) -> dict:
    image_tokens = (size // 16) ** 2
    chosen = variants(compare)
    totals = {v.name: [0.0, 0.0] for v in chosen}
    peaks = {v.name: 0 for v in chosen}
    faults = {v.name: 0 for v in chosen}  # a step's worth: each shape's fewest faults a call, times its count
    for fan_in, fan_out, tokens, count in [(*layer, 1)] if layer else step_layers(config, image_tokens):
        linear = nn.Linear(fan_in, fan_out, bias=False)
        x = mx.random.normal((1, tokens, fan_in))
        mx.eval(linear.parameters(), x)
        layers = {(None, False): linear}
        for bits in (8, 4):
            for kept in {v.kept for v in chosen if v.bits == bits}:
                layer = nn.QuantizedLinear.from_linear(linear, group_size=64, bits=bits)
                dense.use_dense_matmul(layer)
                mx.eval(layer.parameters())
                if kept:
                    dense.keep_dequantized(layer, float("inf"), x.dtype)
                layers[bits, kept] = layer
        best = {}
        for _ in range(rounds):
            for variant in chosen:
                wall, cpu, peak, faulted = timed(layers[variant.bits, variant.kept], x, variant, linear.weight)
                old = best.get(variant.name, (float("inf"), float("inf"), faulted))
                best[variant.name] = (min(old[0], wall), min(old[1], cpu), min(old[2], faulted))
                peaks[variant.name] = max(peaks[variant.name], peak)
        for name, (wall, cpu, faulted) in best.items():
            totals[name][0] += count * wall
            totals[name][1] += count * cpu
            faults[name] += count * faulted
        log(f"{fan_in:>6} -> {fan_out:<6} x {tokens} tokens x {count}: " + ", ".join(
            f"{v.name} {best[v.name][1] / best['unquantized'][1]:.2f}" for v in chosen[1:]) + " (CPU); minor faults "
            + ", ".join(f"{best[v.name][2]}" for v in chosen) + " a call")
        del linear, layers, x
    base_wall, base_cpu = totals["unquantized"]
    rows = [{"variant": name, "wall_seconds": wall, "cpu_seconds": cpu, "wall_ratio": wall / base_wall,
             "cpu_ratio": cpu / base_cpu, "largest_call_peak_bytes": peaks[name], "minor_faults": faults[name]}
            for name, (wall, cpu) in totals.items()]
    return {"size": size, "image_tokens": image_tokens, "text_tokens": TEXT_TOKENS, "rounds": rounds,
            "compare": compare, "current_min_rows": dense.DENSE_SLICE_MIN_ROWS, "slice_bytes": dense.DENSE_SLICE_BYTES,
            "rows": rows}


def streams_check(rows: int = 6144, fan_in: int = 3072, repeats: int = 3) -> dict:
    """Do two CPU streams run at once on this MLX? Two halves of a 4-bit weight's dequantization, on one
    stream and then on two: (wall, CPU) seconds, best of `repeats`. On two threads the wall time halves
    where a core is free, and the CPU time stays."""
    layer = nn.QuantizedLinear.from_linear(nn.Linear(fan_in, rows, bias=False), group_size=64, bits=4)
    mx.eval(layer.parameters())
    second = mx.new_stream(mx.cpu)

    def halves(streams):
        out = []
        for (start, stop), stream in zip(((0, rows // 2), (rows // 2, rows)), streams):
            with mx.stream(stream):
                out.append(dense.dequantize_rows(layer, start, stop, mx.float32))
        return out

    result = {}
    for name, streams in (("one stream", (mx.cpu, mx.cpu)), ("two streams", (mx.cpu, second))):
        mx.eval(halves(streams))
        best = (float("inf"), float("inf"))
        for _ in range(repeats):
            cpu, wall = cpu_seconds(), time.perf_counter()
            mx.eval(halves(streams))
            best = (min(best[0], time.perf_counter() - wall), min(best[1], cpu_seconds() - cpu))
        result[name] = {"wall_seconds": best[0], "cpu_seconds": best[1]}
    return result


def dequantize_alone(shapes: list[tuple[int, int]], repeats: int = 5, calls: int = 20) -> list[dict]:
    """CPU ns a weight of one slice's dequantization alone, before (one compiled pass) and now (MLX's
    ops), best of `repeats` alternating runs of `calls` slices, at each bit width and (input, output) shape;
    and whether the two give the same bits. Each is timed twice: on the layer's slices in turn, as the path
    reads them (their packed bytes come from memory, and each output is written to memory), and on one
    slice again and again (all of it already in the CPU's cache), which flatters both."""
    results = []
    for bits in (8, 4):
        for fan_in, fan_out in shapes:
            layer = nn.QuantizedLinear.from_linear(nn.Linear(fan_in, fan_out, bias=False), group_size=64, bits=bits)
            mx.eval(layer.parameters())
            rows = min(dense.slice_rows(layer, mx.float32), fan_out)
            count = fan_out // rows
            best = {}
            outputs = {}
            for _ in range(repeats):
                for variant in (Variant("before", bits, compiled_affine=True), Variant("now", bits)):
                    with path_as(variant):
                        outputs[variant.name] = dense.dequantize_rows(layer, 0, rows, mx.float32)
                        mx.eval(outputs[variant.name])
                        for where, first in (("in_turn", lambda i: (i % count) * rows), ("cached", lambda i: 0)):
                            key = f"{variant.name}_{where}"
                            cpu = cpu_seconds()
                            for i in range(calls):  # a slice takes about a millisecond: time several
                                mx.eval(dense.dequantize_rows(layer, first(i), first(i) + rows, mx.float32))
                            best[key] = min(best.get(key, float("inf")), cpu_seconds() - cpu)
            weights = calls * rows * fan_in
            results.append({"bits": bits, "in": fan_in, "rows": rows, "slices": count}
                           | {f"{key}_ns_per_weight": seconds * 1e9 / weights for key, seconds in best.items()}
                           | {"bitwise_equal": bool(mx.array_equal(outputs["before"], outputs["now"]).item())})
    return results


def table(report: dict) -> list[str]:
    lines = ["| variant | Linear CPU s/step | over unquantized | Linear wall s/step | over unquantized "
             "| largest call's MLX peak | minor faults a step |", "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['variant']} | {row['cpu_seconds']:.2f} | {row['cpu_ratio']:.3f} | "
                     f"{row['wall_seconds']:.2f} | {row['wall_ratio']:.3f} | "
                     f"{row['largest_call_peak_bytes'] / 2 ** 20:.0f} MB | {row['minor_faults'] / 1e3:.0f}k |")
    return lines


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a FLUX.2 transformer config.json (default: Klein 4B's sizes)")
    parser.add_argument("--size", type=arguments.dimension("--size"), default=256, help="image side in pixels (tokens = (size/16)^2)")
    parser.add_argument("--rounds", type=arguments.rounds, default=3)
    parser.add_argument("--compare", choices=("streams", "slices", "rows", "dequantize", "evaluate", "lanes", "output", "parts", "ahead", "kernel", "tiles", "products"),
                        default="streams",
                        help="streams: one stream, dequantized ahead, dequantized kept (default); slices: the 4 MB "
                             "slice rule against the current one; rows: the current slices against 2 and 4 times "
                             "as many rows (fewer products, each packing the input once); dequantize: the affine "
                             "pass as MLX's ops (now) "
                             "against one compiled kernel (before); evaluate: each slice's product evaluated with the "
                             "next slice's dequantization (now) against the slices left to one lazy graph (before); "
                             "lanes: the slices in lanes of one-thread BLAS (now) against each dequantized ahead on "
                             "one stream while BLAS multiplies on every thread (before); output: each slice's product "
                             "written into the output as it is done (now) against all concatenated at the end "
                             "(before); parts: the path against its sliced products alone (each slice cut from "
                             "the dense weight) and its dequantizations alone (no product), where its time goes; ahead: one group of "
                             "slices queued in the lanes beyond the one being written (now) against two; kernel: the tile "
                             "kernel, dequantizing inside the product (now), against the slices (before); tiles: the "
                             "tile kernel at several tile sizes; products: the tile kernel's own AVX-512 products (now) "
                             "against OpenBLAS's sgemm a tile (before)")
    parser.add_argument("--layer", metavar="IN,OUT,TOKENS", help="time this one Linear shape instead of a step's")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        config = step_config(args.config) if args.config else KLEIN_4B
    except QuantbenchError as exc:
        parser.error(str(exc))
    try:
        layer = tuple(numbers.whole(v) for v in args.layer.split(",")) if args.layer else None
    except ValueError:
        layer = ()
    if layer is not None and (len(layer) != 3 or min(layer) < 1):
        parser.error("--layer takes three positive integers: IN,OUT,TOKENS")
    report = measure(config, args.size, args.rounds, args.compare, (lambda _: None) if args.json else print, layer)
    report["streams_check"] = streams_check()
    check = report["streams_check"]
    lines = table(report) + ["two halves of a dequantization: " + ", ".join(
        f"{name} {v['wall_seconds']:.3f} s wall, {v['cpu_seconds']:.3f} s CPU" for name, v in check.items())]
    if args.compare == "dequantize":
        widths = {}  # one shape per input width: the slice's rows follow from it (slice_rows), unless the layer is narrower
        for fan_in, fan_out, *_ in [layer] if layer else step_layers(config, (args.size // 16) ** 2):
            widths[fan_in] = max(widths.get(fan_in, 0), fan_out)
        shapes = sorted(widths.items())
        report["dequantize_alone"] = dequantize_alone(shapes)
        lines += [f"{r['bits']}-bit slice of {r['rows']} x {r['in']}, the layer's {r['slices']} in turn: "
                  f"{r['before_in_turn_ns_per_weight']:.3f} ns a weight before, {r['now_in_turn_ns_per_weight']:.3f} now "
                  f"(one slice again: {r['before_cached_ns_per_weight']:.3f} and {r['now_cached_ns_per_weight']:.3f}; CPU)"
                  f"{'' if r['bitwise_equal'] else ', BITS DIFFER'}" for r in report["dequantize_alone"]]
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
