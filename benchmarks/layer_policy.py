"""A family's transformer layer policy, measured: every layer quantized alone, the probe pictures drawn again.

Unlike `quantbench sensitivity`, which ranks only the layers the family's policy quantizes, this ranks
every Linear that the size rules allow (input a multiple of 64, at least 4096 weights), the ones the
engine keeps in full precision included, so the table says whether what is kept is what hurts most,
and what the kept layers cost in weights at the released depth.

    python benchmarks/layer_policy.py --arch {z-image,qwen-image-2.1} [--layers N] [--steps S] [--json]
    python benchmarks/layer_policy.py --model DIR [--steps S] [--size PX] [--json]

--component text_encoder ranks the text encoder's layers instead (the prompts encoded again for each).

With --arch it writes a random-weight model (Turbo) at the released widths, so every layer has its real
shape, but only N transformer blocks (Z-Image: N main layers after its 2 + 2 refiner layers; Qwen-Image
2.1: N of its 32 blocks) and 2 text-encoder layers with a 1,024-token vocabulary: a float32 probe of the
whole depth needs 25-30 GB and hours of CPU. The folder goes under --workdir and is deleted afterwards.
Run it under `flock /tmp/qb-heavy.lock` (about 6 GB). With --model DIR, any Z-Image or Qwen-Image 2.1
folder (the tests' tiny fixtures: tests/reference/). Probe: one prompt at 64 px for random models (the
folder's declared probe), else `quantbench sensitivity`'s defaults; --steps overrides the steps. Random
weights draw noise: the PSNR says how faithfully a quantized layer reproduces the full-precision
computation, not how the picture looks.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import quantbench.core  # noqa: F401  (first: the fast BLAS under MLX)
import mlx.core as mx
import numpy as np

from quantbench.core.atomic import staged_folder
from quantbench.core.families import family_for_folder
from quantbench.core.families.qwen_image21 import random_model as qwen21
from quantbench.core.families.qwen_image21.transformer import QwenImage21Transformer
from quantbench.core.families.z_image import random_model as z_image
from quantbench.core.families.z_image.transformer import ZImageTransformer
from quantbench.core.lab.layer_bytes import quantizable_layers
from quantbench.core.lab.probe import PIXEL_PEAK, PictureProbe, probe_settings, psnr_of
from quantbench.core.pipelines import load_pipeline
from quantbench.core.quant import LayerPolicy, as_spec, module_at, quantized_copy, replace_layer
from quantbench.cli import arguments
from quantbench.cli.main import OneLineParser

TEXT_LAYERS, VOCABULARY = 2, 1024


def write_z_image(out: Path, layers: int) -> None:
    shape = replace(z_image.ARCHITECTURES["z-image"], layers=layers, text_layers=TEXT_LAYERS, vocab_size=VOCABULARY)
    mx.random.seed(0)
    with staged_folder(out, overwrite=True) as staging:
        z_image.write_z_image(staging, shape, True, mx.bfloat16, 1 << 30,
                              {"random_weights": f"z-image, {layers} main layers", "width_scale": 1.0, "seed": 0})


def write_qwen_image21(out: Path, layers: int) -> None:
    shapes = replace(qwen21.Shapes(), layers=layers, text_layers=TEXT_LAYERS, vocab_size=VOCABULARY)
    qwen21.write_random_model(out, max_shard_bytes=1 << 30, overwrite=True, shapes=shapes)


# architecture: (writer of a shallow folder, the released transformer built lazily: nothing is evaluated)
ARCHITECTURES = {
    "z-image": (write_z_image, lambda: ZImageTransformer.from_config(
        z_image.component_configs(z_image.ARCHITECTURES["z-image"])["transformer"])),
    "qwen-image-2.1": (write_qwen_image21, lambda: QwenImage21Transformer.from_config(
        qwen21.component_configs(qwen21.Shapes())["transformer"])),
}


def released_share(arch: str, policy: LayerPolicy) -> dict:
    """The kept layers' weights in the released transformer (every block), from its lazily built structure."""
    every = quantizable_layers(ARCHITECTURES[arch][1](), LayerPolicy())
    kept = sum(n for path, n in every.items() if _kept(policy, path))
    return {"params": sum(every.values()), "kept_params": kept, "kept_share": kept / sum(every.values())}


def _kept(policy: LayerPolicy, path: str) -> bool:
    return any(re.fullmatch(rule.pattern, path) for rule in policy.keep)


class TextEncoderProbe(PictureProbe):
    """The probe with the layers swapped in the text encoder, the prompts encoded again for every picture."""

    def error(self, layers) -> float:
        encoder, originals = self.pipeline.ensure_text_encoder(), []
        try:
            for path, spec in layers.items():
                originals.append((path, module_at(encoder, path)))
                replace_layer(encoder, path, quantized_copy(originals[-1][1], as_spec(spec), self.dense))
            self.pipeline._prompt_cache.clear()
            pictures = [self._draw(prompt) for prompt in self.prompts]
        finally:
            for path, original in reversed(originals):
                replace_layer(encoder, path, original)
            self.pipeline._prompt_cache.clear()
        return float(np.mean([np.mean(np.square((a - b) * PIXEL_PEAK / 2)) for a, b in zip(pictures, self.reference)]))


def measure(folder: Path, bits: int, steps: int | None, size: int | None, log, component: str = "transformer") -> dict:
    policy = family_for_folder(folder).component(component).policy
    pipeline = load_pipeline(folder, dtype=mx.float32, allow_download=False)
    module = pipeline.transformer if component == "transformer" else pipeline.ensure_text_encoder()
    every = quantizable_layers(module, LayerPolicy())  # the size rules alone: kept layers included
    total = sum(every.values())
    source, prompts, size, steps = probe_settings(pipeline, None, size, steps, str(folder))
    rows, started = [], time.perf_counter()
    probe_class = PictureProbe if component == "transformer" else TextEncoderProbe
    with probe_class(pipeline, prompts, 0, size, steps) as probe:
        everything = probe.error({path: bits for path in every})
        log(f"every layer at once: {psnr_of(everything):.1f} dB")
        for i, (path, weights) in enumerate(every.items()):
            error = probe.error({path: bits})
            rows.append({"layer": path, "params": weights, "share": weights / total, "error": error,
                         "psnr_db": round(psnr_of(error), 2), "kept": _kept(policy, path)})
            log(f"[{i + 1}/{len(every)}] {path}: {psnr_of(error):.1f} dB")
    rows.sort(key=lambda r: -r["error"])
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    kept = [r for r in rows if r["kept"]]
    return {"model": source, "component": component, "bits": bits, "size": size, "steps": steps, "prompts": prompts,
            "transformer_params": total, "seconds": round(time.perf_counter() - started, 1),
            "all_layers_error": everything, "all_layers_psnr_db": round(psnr_of(everything), 2),
            "kept_share": sum(r["share"] for r in kept), "kept_ranks": [r["rank"] for r in kept],
            "kept_error_share": sum(r["error"] for r in kept) / sum(r["error"] for r in rows), "rows": rows}


def table(report: dict, top: int = 30) -> list[str]:
    lines = [f"{report['model']}, {report.get('component', 'transformer')}: each layer alone at {report['bits']} bits; {len(report['prompts'])} probe "
             f"picture(s) at {report['size']} px, {report['steps']} steps; {report['seconds']:.0f} s; every layer "
             f"at once {report['all_layers_psnr_db']:.1f} dB", "",
             f"{'rank':>4}  {'layer':<48}{'params':>9}{'share':>9}{'MSE':>11}{'PSNR dB':>9}  kept"]
    for row in report["rows"][:top]:
        lines.append(f"{row['rank']:>4}  {row['layer']:<48}{row['params'] / 1e6:>8.2f}M{100 * row['share']:>8.3f}%"
                     f"{row['error']:>11.5f}{row['psnr_db']:>9.1f}  {'kept' if row['kept'] else ''}")
    if len(report["rows"]) > top:
        lines.append(f"      ... {len(report['rows']) - top} more")
    lines.append(f"kept by the engine's policy: ranks {report['kept_ranks']} of {len(report['rows'])}, "
                 f"{100 * report['kept_error_share']:.0f}% of the summed single-layer error, "
                 f"{100 * report['kept_share']:.3f}% of this model's weights")
    if "released" in report:
        released = report["released"]
        lines.append(f"at the released depth: {released['kept_params'] / 1e6:.1f}M of {released['params'] / 1e6:,.0f}M "
                     f"quantizable weights kept ({100 * released['kept_share']:.2f}%)")
    return lines


def main() -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", choices=sorted(ARCHITECTURES), help="a shallow random model at the released widths")
    source.add_argument("--model", type=Path, help="a Z-Image or Qwen-Image 2.1 folder")
    parser.add_argument("--layers", type=arguments.whole(1, 1000, "--layers"), default=2, help="transformer blocks of the random model (default 2)")
    parser.add_argument("--component", choices=("transformer", "text_encoder"), default="transformer",
                        help="whose layers are ranked (default transformer)")
    parser.add_argument("--bits", type=arguments.whole(2, 8, "--bits"), default=4)
    parser.add_argument("--steps", type=arguments.steps, help="sampling steps of the probe (default: the folder's)")
    parser.add_argument("--size", type=arguments.dimension("--size"), help="probe size in pixels (default: the folder's)")
    parser.add_argument("--workdir", type=Path, help="where the random model is written (default: the system's temp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    with tempfile.TemporaryDirectory(prefix="layer-policy-", dir=args.workdir) as tmp:
        folder = args.model
        if args.arch:
            folder = Path(tmp) / args.arch
            log(f"writing {args.arch} with {args.layers} blocks at the released widths to {folder} ...")
            ARCHITECTURES[args.arch][0](folder, args.layers)
        policy = family_for_folder(folder).component(args.component).policy
        report = measure(folder, args.bits, args.steps, args.size, log, args.component)
    if args.arch and args.component == "transformer":
        report["released"] = released_share(args.arch, policy)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(table(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
