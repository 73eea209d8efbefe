"""Where a VAE decode's CPU time goes: convolutions, group norms and the rest (activations, upsampling,
attention), each module evaluated on its own, after two plain decodes.

    python benchmarks/vae_decode.py --model DIR [--size 256] [--json]

CPU seconds (getrusage, all threads) rather than wall time: on a shared machine they are what the
decode costs whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections import defaultdict
from pathlib import Path

import quantbench.core  # noqa: F401  (OpenBLAS under MLX first)
import mlx.core as mx
import mlx.nn as nn

from quantbench.core.component_loading import ComponentLoader
from quantbench.core.families import family_for_folder

TIMED = (nn.Conv2d, nn.GroupNorm)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_decode(vae: nn.Module, z: mx.array) -> float:
    started = cpu_seconds()
    mx.eval(vae.decode(z))
    return cpu_seconds() - started


def profiled_decode(vae: nn.Module, z: mx.array) -> dict[str, float]:
    """CPU seconds by module type, each module's inputs evaluated before it and its output after."""
    totals: dict[str, float] = defaultdict(float)
    originals = {cls: cls.__call__ for cls in TIMED}

    def timed(cls):
        def call(self, *args, **kwargs):
            mx.eval(*[a for a in args if isinstance(a, mx.array)])
            started = cpu_seconds()
            out = originals[cls](self, *args, **kwargs)
            mx.eval(out)
            totals[cls.__name__] += cpu_seconds() - started
            return out
        return call

    for cls in TIMED:
        cls.__call__ = timed(cls)
    try:
        total = timed_decode(vae, z)
    finally:
        for cls, call in originals.items():
            cls.__call__ = call
    return {**totals, "rest": total - sum(totals.values()), "total": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder (its vae/ is decoded)")
    parser.add_argument("--size", type=int, default=256, help="square image size in pixels")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    vae = ComponentLoader(family_for_folder(args.model), args.model, mx.float32, None, None, "dense").vae()
    channels = vae.decoder.conv_in.weight.shape[-1]
    z = mx.random.normal((1, args.size // vae.scale_factor, args.size // vae.scale_factor, channels))
    mx.eval(z)
    plain = [timed_decode(vae, z) for _ in range(2)]
    split = profiled_decode(vae, z)
    report = {"model": str(args.model), "size": args.size, "decode_cpu_seconds": plain, "profile": split}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"{args.model.name}, {args.size}x{args.size}: decode {min(plain):.2f} CPU s (best of 2)")
    for name, seconds in split.items():
        if name != "total":
            print(f"  {name:<10} {seconds:6.2f} s  {100 * seconds / split['total']:3.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
