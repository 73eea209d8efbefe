"""Mixed precision against uniform 4-bit at the same transformer bytes: PSNR/SSIM against full precision.

For each model: load it once in full precision, draw the reference pictures (fixed prompts x seeds),
search a plan whose transformer bytes are at most uniform 4-bit's (auto:4: an average of 4 bits per
quantized weight; the bf16 scales and biases cost the same at every bit width, so the bytes are equal
or fewer) on the planner's own probe pictures (other prompts, seed 0: not the evaluation's), then
quantize in memory to each variant and draw the same pictures. Reports mean
PSNR and SSIM against the full-precision pictures (and prompt-attribute accuracy for the built-in
models), the transformer bytes, and the margin mixed - uniform.

    python benchmarks/mixed_precision.py [--model NAME_OR_DIR ...] [--steps N] [--json]

Default models: the built-in demo and demo-turbo when they are present under core/builtin/models/;
otherwise two random-weight tiny FLUX.2 models (distilled and base, written by the engine, the
architecture of the tests' tiny fixtures): their pictures are noise, so the PSNR there measures how
faithfully each variant reproduces the full-precision computation, not picture quality.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import quantbench.core  # noqa: F401  (first: the fast BLAS under MLX)
import mlx.core as mx
import numpy as np

from quantbench.core.lab.compare import world_scene
from quantbench.core.lab.requantize import Requantizer
from quantbench.core.lab.models import BUILTIN_NAMES, builtin_available, is_builtin, resolve_lab_model
from quantbench.core.lab.planner import make_plan
from quantbench.core.lab.budgets import parse_budget
from quantbench.core.pipelines import load_pipeline
from quantbench.core.metrics import psnr, ssim
from quantbench.cli import arguments
from quantbench.cli.main import OneLineParser

GENERAL_PROMPTS = ("a red bicycle leaning against a brick wall", "a lighthouse on a cliff at dusk",
                   "a plate of pancakes with berries", "an old map on a desk")
# world.eval_prompts() indices, none of the planner's probe scenes
BUILTIN_EVAL_SCENES = (10, 30, 52, 75, 97, 118, 5, 60)


def eval_prompts(source: str, folder: Path, count: int) -> list[str]:
    if is_builtin(source, folder):
        from quantbench.core.builtin.captions import caption
        from quantbench.core.builtin.world import eval_prompts as scenes
        every = scenes()
        return [caption(every[i]) for i in BUILTIN_EVAL_SCENES[:count]]
    return list(GENERAL_PROMPTS[:count])


def measure_model(source: str, variants: list[str], prompts_count: int, seeds: list[int], steps: int | None,
                  size: int | None, log) -> dict:
    folder = resolve_lab_model(source)
    builtin = is_builtin(source, folder)
    pipeline = load_pipeline(folder, quantize=None, allow_download=False)
    size = size or 64  # the built-in models' native size (and enough tokens for the random ones)
    steps = steps or pipeline.default_steps
    prompts = eval_prompts(source, folder, prompts_count)
    cases = [(p, s) for p in prompts for s in seeds]

    def draw() -> list:
        return [pipeline.generate(p, seed=s, steps=steps, width=size, height=size, preview=False).image
                for p, s in cases]

    log(f"{source}: full-precision reference, {len(cases)} pictures at {size}x{size}, {steps} steps ...")
    references = draw()
    requantizer = Requantizer(pipeline)
    rows, searches = [], {}
    for variant in variants:
        if variant.startswith("auto:"):
            started = time.perf_counter()
            plan = make_plan(pipeline, parse_budget(variant), size=size, model_name=source)
            log(f"{source}: {variant} plan searched in {time.perf_counter() - started:.1f}s: {plan.search}")
            searches[variant] = {**plan.search, "histogram": plan.histogram(), "granularity":
                                 plan.sensitivity.get("granularity"), "probe_prompts": plan.sensitivity.get("prompts")}
            spec, label = dict(plan.layers), f"mixed {variant}"
        else:
            spec, label = int(variant), f"uniform {variant}-bit"
        transformer, report = requantizer.build(spec)
        with requantizer.using(transformer):
            images = draw()
        del transformer
        mx.clear_cache()
        psnrs = [psnr(a, b) for a, b in zip(images, references)]
        ssims = [ssim(a, b) for a, b in zip(images, references)] if size >= 11 else []
        row = {"variant": label, "transformer_bytes": report.nbytes, "bits": sorted({s.bits for s in report.layers.values()}),
               "psnr_mean": float(np.mean(psnrs)), "psnr_min": float(np.min(psnrs)),
               "ssim_mean": float(np.mean(ssims)) if ssims else None, "psnr_each": [round(p, 3) for p in psnrs]}
        if builtin:
            from quantbench.core.builtin.analyser import analyse
            checks = [analyse(image, world_scene(p)) for image, (p, _) in zip(images, cases)]
            row["attribute_accuracy"] = float(np.mean([np.mean(list(c.values())) for c in checks]))
        rows.append(row)
        log(f"{source}: {label}: {report.nbytes:,} bytes, PSNR {row['psnr_mean']:.2f} dB")
    result = {"model": source, "builtin": builtin, "size": size, "steps": steps, "prompts": prompts, "seeds": seeds,
              "searches": searches, "rows": rows}
    uniform = next((r for r in rows if r["variant"] == "uniform 4-bit"), None)
    mixed = next((r for r in rows if r["variant"] == "mixed auto:4"), None)
    if uniform and mixed:
        wins = sum(m > u for m, u in zip(mixed["psnr_each"], uniform["psnr_each"]))
        result["margin"] = {"psnr_db": mixed["psnr_mean"] - uniform["psnr_mean"],
                            "ssim": (mixed["ssim_mean"] - uniform["ssim_mean"]) if mixed["ssim_mean"] else None,
                            "bytes": mixed["transformer_bytes"] - uniform["transformer_bytes"],
                            "pictures_better": f"{wins}/{len(cases)}"}
    return result


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None, help="a model (repeat; default: see above)")
    parser.add_argument("--variants", default="3,4,auto:4,5",
                        help="uniform bits and auto:BITS plans to measure (default 3,4,auto:4,5)")
    parser.add_argument("--prompts", type=arguments.whole(1, 125, "--prompts"), default=8, help="evaluation prompts per model (default 8)")
    parser.add_argument("--seeds", default="100,101", help="evaluation seeds (default 100,101)")
    parser.add_argument("--steps", type=arguments.steps, default=None, help="default: the model's; 8 for the random models")
    parser.add_argument("--size", type=arguments.dimension("--size"), default=None, help="default: 64 (the built-in models' native size)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    log = (lambda message: print(message, file=sys.stderr, flush=True))
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        models, steps = args.model, args.steps
        note = "given models"
        if models is None:
            models = [name for name in BUILTIN_NAMES if builtin_available(name)]
            note = "built-in models"
            if not models:
                from quantbench.core.random_model import write_random_model
                models = [str(write_random_model(Path(tmp) / "random-tiny-distilled", "tiny")),
                          str(write_random_model(Path(tmp) / "random-tiny-base", "tiny", distilled=False, seed=1))]
                steps = steps or 8
                note = "the built-in models are not present: random-weight tiny FLUX.2 models (distilled, base)"
        results = [measure_model(m, variants, args.prompts, seeds, steps, args.size, log)
                   for m in models]
    if args.json:
        print(json.dumps({"measured": note, "models": results}, indent=2))
        return 0
    print(f"measured: {note}")
    for result in results:
        print(f"\n{result['model']}: {len(result['prompts'])} prompts x {len(result['seeds'])} seeds, "
              f"{result['size']}x{result['size']}, {result['steps']} steps; PSNR/SSIM against full precision")
        print(f"{'variant':<18}{'transformer':>14}{'bits':>10}{'PSNR dB':>10}{'min':>8}{'SSIM':>11}"
              + ("   attrs" if result["builtin"] else ""))
        for r in result["rows"]:
            bits = "-".join(map(str, (r["bits"][0], r["bits"][-1]))) if len(r["bits"]) > 1 else str(r["bits"][0])
            ssim_text = f"{r['ssim_mean']:.6f}" if r["ssim_mean"] is not None else "-"
            print(f"{r['variant']:<18}{r['transformer_bytes']:>14,}{bits:>10}{r['psnr_mean']:>10.2f}"
                  f"{r['psnr_min']:>8.2f}{ssim_text:>11}"
                  + (f"{r['attribute_accuracy']:>8.2f}" if "attribute_accuracy" in r else ""))
        for variant, search in result["searches"].items():
            print(f"{variant} plan: searched from uniform {search['start_bits']}-bit on {search['probe_prompts']} "
                  f"probe prompts ({search['granularity']}s), {search['trades']} trades kept, {search['draws']} "
                  f"pictures, {search['seconds']:.0f}s; probe PSNR {search['start_psnr_db']:.2f} -> "
                  f"{search['psnr_db']:.2f} dB; bits {search['histogram']}")
        margin = result.get("margin")
        if margin:
            print(f"margin, mixed auto:4 - uniform 4-bit: {margin['psnr_db']:+.2f} dB PSNR"
                  + (f", {margin['ssim']:+.6f} SSIM" if margin["ssim"] is not None else "")
                  + f", {margin['bytes']:+,} bytes; better on {margin['pictures_better']} pictures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
