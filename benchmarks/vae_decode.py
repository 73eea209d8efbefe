"""The VAE decode on the CPU: quantbench's own CPU path, MLX's kernels (as before it) and diffusers on
torch, from one model folder's vae/ with the same weights and the same latents; time, memory, parity,
and where the time goes.

    python benchmarks/vae_decode.py --model DIR [--sizes 256,512] [--rounds 2] [--tile PX] [--json-out FILE]
    python benchmarks/vae_decode.py --table-from FILE   (the table of a saved run again)

Tools (each run is a fresh process, so its peak RSS is its own; the runs alternate, every tool once
per round, so a shared machine's drift hits all alike):

  quantbench             the decoder with its CPU path (core/blocks/vae_ops.py): a BLAS product per
                         convolution tap, the group norm fused with SiLU on fast_math's exp
  quantbench mlx-ops     the same decoder on MLX's own conv2d, GroupNorm and SiLU (the path before)
  diffusers              AutoencoderKLFlux2 / AutoencoderKL on torch's CPU, float32, all cores

A run loads the VAE in float32, decodes the latents twice (decode s is the faster; the first one
warms the allocator) and then once more with every module evaluated on its own, which splits the
CPU seconds into 3x3 and 1x1 convolutions, group norm + SiLU, the mid block's attention, the nearest
upsampling and the rest (each module's own time, its children's not counted). Peak RSS is the
process's getrusage maximum (torch and MLX loaded, the weights, the decodes); MLX peak is MLX's own
counter over the decodes. `--tile PX` adds the quantbench tools decoding in tiles of PX pixels
(core/blocks/vae.py's decode_tiled, as --low-memory does). Parity: the largest difference from
diffusers' image, over diffusers' largest value
(tiled decodes: from MLX's own kernels' image in the same tiles).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from cpus import usable_cpus

TOOLS = ("quantbench", "quantbench mlx-ops", "diffusers")
LATENT_SEED = 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def latents(channels: int, size: int, scale: int):
    """(1, C, H/scale, W/scale) float32 NCHW, the same for every tool."""
    import numpy as np
    side = size // scale
    return np.random.default_rng(LATENT_SEED).standard_normal((1, channels, side, side)).astype(np.float32)


class SplitTimer:
    """CPU seconds by label, each call's own: a timed call inside another is subtracted from the outer one."""

    def __init__(self, sync):
        self.sync = sync  # forces lazy work (MLX) to run, so it is counted where it belongs
        self.seconds: dict[str, float] = defaultdict(float)
        self._children: list[float] = []

    def wrap(self, cls, method: str, label):
        original = getattr(cls, method)

        def timed(module, *args, **kwargs):
            self.sync(args)
            self._children.append(0.0)
            started = cpu_seconds()
            out = original(module, *args, **kwargs)
            self.sync(out)
            elapsed = cpu_seconds() - started
            own = elapsed - self._children.pop()
            self.seconds[label(module) if callable(label) else label] += own
            if self._children:
                self._children[-1] += elapsed
            return out

        setattr(cls, method, timed)
        return lambda: setattr(cls, method, original)


def _kernel_label(size: int) -> str:
    return f"conv {size}x{size}"


# ---------------------------------------------------------------------------------------------- workers

def quantbench_decoder(folder: Path, own_cpu_path: bool, tile: int | None):
    import quantbench.core  # noqa: F401  (OpenBLAS under MLX first)
    import mlx.core as mx
    import numpy as np
    from quantbench.core.blocks import autoencoder_kl, vae_ops
    from quantbench.core.blocks.vae import decode_tiled
    from quantbench.core.component_loading import ComponentLoader
    from quantbench.core.families import family_for_folder

    vae_ops.CPU_PATH = own_cpu_path
    vae = ComponentLoader(family_for_folder(folder), folder, mx.float32, None, None, "dense").vae()
    channels = vae.decoder.conv_in.weight.shape[-1]

    def decode(z):
        z = mx.array(z.transpose(0, 2, 3, 1))
        if tile:
            return decode_tiled(vae, z, tile)
        out = vae.decode(z)
        mx.eval(out)
        return np.array(out)

    def sync(values):
        arrays = [v for v in (values if isinstance(values, (tuple, list)) else [values]) if isinstance(v, mx.array)]
        if arrays:
            mx.eval(*arrays)

    def patch(timer: SplitTimer):
        return [timer.wrap(vae_ops.Conv2d, "__call__", lambda m: _kernel_label(m.weight.shape[1])),
                timer.wrap(vae_ops.GroupNorm, "normalize", "group norm + SiLU"),
                timer.wrap(autoencoder_kl.SpatialSelfAttention, "__call__", "mid-block attention"),
                timer.wrap(autoencoder_kl.Upsampler, "__call__", "upsampling")]

    def memory():
        return {"mlx_peak_bytes": mx.get_peak_memory()}

    return decode, channels, vae.scale_factor, sync, patch, memory, lambda: mx.reset_peak_memory()


def diffusers_decoder(folder: Path):
    import torch
    import diffusers
    from diffusers.models.attention_processor import Attention
    from diffusers.models.upsampling import Upsample2D

    torch.set_num_threads(usable_cpus())
    config = json.loads((folder / "vae" / "config.json").read_text())
    vae = getattr(diffusers, config["_class_name"]).from_pretrained(folder / "vae", torch_dtype=torch.float32).eval()
    channels = config["latent_channels"]

    @torch.no_grad()
    def decode(z):
        return vae.decode(torch.from_numpy(z)).sample.numpy().transpose(0, 2, 3, 1)

    def patch(timer: SplitTimer):
        nn = torch.nn
        return [timer.wrap(nn.Conv2d, "forward", lambda m: _kernel_label(m.kernel_size[0])),
                timer.wrap(nn.GroupNorm, "forward", "group norm + SiLU"),
                timer.wrap(nn.SiLU, "forward", "group norm + SiLU"),
                timer.wrap(Attention, "forward", "mid-block attention"),
                timer.wrap(Upsample2D, "forward", "upsampling")]

    scale = 2 ** (len(config["block_out_channels"]) - 1)
    return decode, channels, scale, lambda values: None, patch, dict, lambda: None


def worker(tool: str, folder: Path, size: int, tile: int | None, image_out: Path) -> dict:
    import numpy as np

    started = time.perf_counter()
    if tool == "diffusers":
        decode, channels, scale, sync, patch, memory, reset = diffusers_decoder(folder)
    else:
        decode, channels, scale, sync, patch, memory, reset = quantbench_decoder(folder, tool == "quantbench", tile)
    load_seconds = time.perf_counter() - started
    z = latents(channels, size, scale)
    rss_loaded = peak_rss()
    reset()
    walls, cpus = [], []
    for _ in range(2):
        wall, cpu = time.perf_counter(), cpu_seconds()
        image = decode(z)
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_seconds() - cpu)
    measured = {"peak_rss_bytes": peak_rss(), "peak_rss_loaded_bytes": rss_loaded, **memory()}
    np.save(image_out, np.asarray(image, np.float32))
    timer = SplitTimer(sync)
    restore = patch(timer)
    try:
        total = cpu_seconds()
        decode(z)
        total = cpu_seconds() - total
    finally:
        for undo in restore:
            undo()
    split = dict(sorted(timer.seconds.items()))
    split["rest"] = total - sum(split.values())
    return {"tool": tool, "size": size, "tile": tile, "load_seconds": load_seconds, "decode_seconds": walls,
            "decode_cpu_seconds": cpus, **measured, "split_cpu_seconds": split, "split_total": total}


# ---------------------------------------------------------------------------------------------- driver

def run_one(tool: str, folder: Path, size: int, tile: int | None, image_out: Path) -> dict:
    command = [sys.executable, __file__, "--model", str(folder), "--worker", tool, "--sizes", str(size),
               "--image-out", str(image_out)] + (["--tile", str(tile)] if tile else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"tool": tool, "size": size, "tile": tile, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict], images: dict) -> list[dict]:
    import numpy as np

    rows = []
    for key in dict.fromkeys((r["tool"], r["size"], r["tile"]) for r in runs):
        mine = [r for r in runs if (r["tool"], r["size"], r["tile"]) == key and "error" not in r]
        if not mine:
            rows.append({"tool": key[0], "size": key[1], "tile": key[2],
                         "error": next(r["error"] for r in runs if (r["tool"], r["size"], r["tile"]) == key)})
            continue
        row = {"tool": key[0], "size": key[1], "tile": key[2],
               "decode_seconds": statistics.median(min(r["decode_seconds"]) for r in mine),
               "decode_cpu_seconds": statistics.median(min(r["decode_cpu_seconds"]) for r in mine),
               "load_seconds": statistics.median(r["load_seconds"] for r in mine),
               "peak_rss_bytes": max(r["peak_rss_bytes"] for r in mine),
               "decode_rss_bytes": max(r["peak_rss_bytes"] - r["peak_rss_loaded_bytes"] for r in mine),
               "mlx_peak_bytes": max((r.get("mlx_peak_bytes") or 0) for r in mine) or None,
               "split_cpu_seconds": {k: statistics.median(r["split_cpu_seconds"].get(k, 0.0) for r in mine)
                                     for k in mine[0]["split_cpu_seconds"]},
               "rounds": len(mine)}
        # Whole decodes against diffusers; tiled ones against MLX's own kernels in the same tiles.
        reference = images.get(("diffusers", key[1], None) if key[2] is None else ("quantbench mlx-ops", *key[1:]))
        if reference is not None and reference != images.get(key):
            expected, ours = np.load(reference), np.load(images[key])
            row["max_abs_diff_over_max"] = float(np.abs(ours - expected).max() / np.abs(expected).max())
        rows.append(row)
    return rows


def print_table(rows: list[dict], load: tuple[float, ...]) -> None:
    gb = 1e9
    print(f"VAE decode on the CPU, one alternating run (load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})")
    print(f"{'tool':<22}{'size':>5}{'tile':>6}{'decode s':>10}{'CPU s':>8}{'peak RSS':>10}"
          f"{'decode RSS':>12}{'MLX peak':>10}{'parity':>10}")
    for row in rows:
        tile = str(row["tile"] or "-")
        if "error" in row:
            print(f"{row['tool']:<22}{row['size']:>5}{tile:>6}  failed: {row['error']}")
            continue
        mlx_peak = f"{row['mlx_peak_bytes'] / gb:.2f} GB" if row["mlx_peak_bytes"] else "-"
        parity = f"{row['max_abs_diff_over_max']:.1e}" if "max_abs_diff_over_max" in row else "-"
        print(f"{row['tool']:<22}{row['size']:>5}{tile:>6}{row['decode_seconds']:>10.2f}{row['decode_cpu_seconds']:>8.2f}"
              f"{row['peak_rss_bytes'] / gb:>7.2f} GB{row['decode_rss_bytes'] / gb:>9.2f} GB{mlx_peak:>10}{parity:>10}")
    print("\nWhere the CPU seconds go (each module's own time, one decode with every module evaluated alone)")
    for row in rows:
        if "error" in row or row["tile"]:
            continue
        split = row["split_cpu_seconds"]
        total = sum(split.values())
        parts = "  ".join(f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in split.items())
        print(f"{row['tool']:<22}{row['size']:>5}  {parts}")


def main() -> int:
    if "--worker" in sys.argv[1:]:  # the driver's own values; a worker imports quantbench only for its own tools
        parser, whole_number, rounds, tile = argparse.ArgumentParser(), int, int, int
    else:  # numbers as the quantbench commands read them (core/numbers.py): a bad one is one line and exit 2
        from quantbench.cli import arguments
        from quantbench.cli.main import OneLineParser
        from quantbench.core.numbers import whole as whole_number
        parser = OneLineParser(description=__doc__.splitlines()[0])
        rounds, tile = arguments.rounds, arguments.whole(64, 4096, "--tile")
    parser.add_argument("--model", type=Path, help="a model folder (its vae/ is decoded)")
    parser.add_argument("--sizes", default="256,512", help="square image sizes in pixels, comma-separated")
    parser.add_argument("--rounds", type=rounds, default=2, help="alternating rounds (every tool once each)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, of: " + ", ".join(TOOLS))
    parser.add_argument("--tile", type=tile, help="also decode in tiles of this many pixels (quantbench tools)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report (every run, every row) here")
    parser.add_argument("--table-from", type=Path, help="print the table of a report --json-out wrote, and stop")
    parser.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--image-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table_from:
        try:
            report = json.loads(args.table_from.read_text())
            print_table(report["rows"], report["load_average"])
        except (OSError, ValueError, KeyError) as err:
            parser.error(f"--table-from: {args.table_from} is not a report of this benchmark ({err})")
        return 0
    if args.model is None:
        parser.error("--model is required")
    try:
        sizes = [whole_number(s) for s in args.sizes.split(",")]
        if min(sizes) < 16:
            raise ValueError("too small")
    except ValueError:
        parser.error(f"--sizes: not a list of whole numbers: {args.sizes!r}")
    tools = [t.strip() for t in args.tools.split(",")]
    if unknown := sorted(set(tools) - set(TOOLS)):
        parser.error(f"--tools: unknown {', '.join(unknown)}")
    if not (args.model / "vae" / "config.json").is_file():
        parser.error(f"--model: {args.model} has no vae/config.json")
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, sizes[0], args.tile, args.image_out)))
        return 0
    if args.json_out:  # before the runs, not after them (the workers never import quantbench: their own venvs)
        from quantbench.cli.arguments import report_file
        try:
            report_file(str(args.json_out))
        except argparse.ArgumentTypeError as err:
            parser.error(f"--json-out: {err}")
    runs, images = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for size in sizes:
                jobs = [(tool, None) for tool in tools]
                jobs += [(tool, args.tile) for tool in tools if args.tile and tool != "diffusers"]
                for tool, tile in jobs:
                    image = Path(scratch) / f"{tool.replace(' ', '_')}-{size}-{tile}-{round_}.npy"
                    run = run_one(tool, args.model, size, tile, image)
                    runs.append(run)
                    if "error" not in run:
                        images[(tool, size, tile)] = image
                    outcome = "failed: " + run["error"] if "error" in run else f"{min(run['decode_seconds']):.2f} s"
                    where = f"{size} px" + (f", tile {tile}" if tile else "")
                    print(f"  round {round_ + 1}, {tool}, {where}: {outcome}", file=sys.stderr)
        rows = summarize(runs, images)
    load = os.getloadavg()
    if args.json_out:
        report = {"model": str(args.model), "sizes": sizes, "rounds": args.rounds, "load_average": load,
                  "rows": rows, "runs": runs}
        from quantbench.core.atomic import write_json
        write_json(args.json_out, report)
    print_table(rows, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
