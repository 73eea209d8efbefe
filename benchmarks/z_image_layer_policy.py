"""Z-Image's layer policy, measured: every transformer layer quantized alone, the pictures drawn again.

Unlike `quantbench sensitivity`, which ranks only the layers the family's policy quantizes, this ranks
every Linear that the size rules allow (input a multiple of 64, at least 4096 weights), the ones the
engine keeps in full precision included, so the table says whether what is kept is what hurts most
and what it costs in weights.

    python benchmarks/z_image_layer_policy.py [--model DIR] [--layers N] [--bits 4] [--json]

Without --model it writes a random-weight Z-Image-Turbo at the released widths (transformer 3840 with
heads of 128, Qwen3 at 2560) but only N main layers (default 2, after the 2 + 2 refiner layers) and 3
text layers, so every layer has its real shape and a float32 probe fits a 24 GB machine (about 5.5 GB:
run it under `flock /tmp/qb-heavy.lock`). With --model DIR, any Z-Image folder (the tests' tiny fixture:
`tests/reference/z_image.py`). Probe: the folder's declared one (random models: 1 prompt, 64 px, 4 steps),
else `quantbench sensitivity`'s defaults. Random weights draw noise: the PSNR says how faithfully a
quantized layer reproduces the full-precision computation, not how the picture looks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import quantbench.core  # noqa: F401  (first: the fast BLAS under MLX)
import mlx.core as mx

from quantbench.core.atomic import staged_folder
from quantbench.core.families.z_image.components import TRANSFORMER_POLICY
from quantbench.core.families.z_image.random_model import ARCHITECTURES, write_z_image
from quantbench.core.lab.layer_bytes import quantizable_layers
from quantbench.core.lab.probe import PictureProbe, probe_settings, psnr_of
from quantbench.core.pipelines import load_pipeline
from quantbench.core.quant import LayerPolicy


def write_shallow(out: Path, layers: int) -> Path:
    shape = ARCHITECTURES["z-image"]
    shape = type(shape)(**{**shape.__dict__, "layers": layers, "text_layers": 3})
    mx.random.seed(0)
    with staged_folder(out, overwrite=True) as staging:
        write_z_image(staging, shape, True, mx.bfloat16, 1 << 30,
                      {"random_weights": f"z-image, {layers} main layers", "width_scale": 1.0, "seed": 0})
    return out


def measure(folder: Path, bits: int, log) -> dict:
    pipeline = load_pipeline(folder, dtype=mx.float32, allow_download=False)
    transformer = pipeline.transformer
    every = quantizable_layers(transformer, LayerPolicy())  # the size rules alone: kept layers included
    total = sum(every.values())
    source, prompts, size, steps = probe_settings(pipeline, None, None, None, str(folder))
    rows, started = [], time.perf_counter()
    with PictureProbe(pipeline, prompts, 0, size, steps) as probe:
        for i, (path, weights) in enumerate(every.items()):
            error = probe.error({path: bits})
            kept = any(re.fullmatch(rule.pattern, path) for rule in TRANSFORMER_POLICY.keep)
            rows.append({"layer": path, "params": weights, "share": weights / total, "error": error,
                         "psnr_db": round(psnr_of(error), 2), "kept": kept})
            log(f"[{i + 1}/{len(every)}] {path}: {psnr_of(error):.1f} dB")
    rows.sort(key=lambda r: -r["error"])
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    kept = [r for r in rows if r["kept"]]
    return {"model": source, "bits": bits, "size": size, "steps": steps, "prompts": prompts,
            "transformer_params": total, "seconds": round(time.perf_counter() - started, 1),
            "kept_share": sum(r["share"] for r in kept), "kept_ranks": [r["rank"] for r in kept], "rows": rows}


def table(report: dict, top: int = 25) -> list[str]:
    lines = [f"{report['model']}: each layer alone at {report['bits']} bits; {len(report['prompts'])} probe "
             f"picture(s) at {report['size']} px, {report['steps']} steps; {report['seconds']:.0f} s", "",
             f"{'rank':>4}  {'layer':<44}{'params':>9}{'share':>9}{'MSE':>11}{'PSNR dB':>9}  kept"]
    for row in report["rows"][:top]:
        lines.append(f"{row['rank']:>4}  {row['layer']:<44}{row['params'] / 1e6:>8.2f}M{100 * row['share']:>8.3f}%"
                     f"{row['error']:>11.4f}{row['psnr_db']:>9.1f}  {'kept' if row['kept'] else ''}")
    lines += [f"      ... {len(report['rows']) - top} more" if len(report["rows"]) > top else "",
              f"kept by the engine's policy: {100 * report['kept_share']:.3f}% of the weights, ranks "
              f"{report['kept_ranks']} of {len(report['rows'])}"]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a Z-Image folder (default: a shallow random one at full width)")
    parser.add_argument("--layers", type=int, default=2, help="main layers of the random model (default 2)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    with tempfile.TemporaryDirectory(prefix="z-image-policy-") as tmp:
        folder = args.model or write_shallow(Path(tmp) / "z-image-shallow", args.layers)
        report = measure(folder, args.bits, log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(table(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
