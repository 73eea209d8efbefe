"""quantbench eval: a built-in model's attribute accuracy and quantization damage on the fixed eval prompts.

Every prompt of `world.eval_prompts()` (125 scenes, 20 of them with held-out colour-shape pairs) is
generated at 64x64 with the model's default steps and guidance, seed = the prompt's index, and
read back by the analyser. The unquantized images are generated first, in the same run, and
each quantized precision is compared with them pixel for pixel: PSNR of the pooled squared error
over all images (infinite when every image is identical) and mean SSIM.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from quantbench.core.builtin import BUILTIN_MODELS, DEFAULT_MODEL
from quantbench.core.distributed import (RankSummary, World, available, distributed_section, gather_shares,
                                           merge_summaries, rank_lines, run_share, say as rank_say, split_runs,
                                           world)
from quantbench.core.distributed_phases import phase
from quantbench.core.errors import InvalidRequest
from quantbench.core.quant import UNQUANTIZED, parse_spec
from quantbench.core.saved_request import refuse_saved_transformer
from quantbench.core.sources import resolve_model_folder

from . import arguments
from .output import add_calibration_argument, calibration_options, emit

IMAGE_SIZE = 64
PROGRESS_EVERY = 25  # pictures between two progress lines (and one at the last picture)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="attribute accuracy and PSNR/SSIM of a built-in model on the fixed eval prompts",
        description="Generate the fixed eval prompts (world.eval_prompts(): 125 scenes, seed = index) at 64x64, "
                    "score each picture's attributes with the analyser, and compare quantized pictures with "
                    "the unquantized ones of the same seeds (PSNR, SSIM). Under mlx.launch with N ranks, the prompts are "
                    "split across the ranks and rank 0 prints the same results (README: Across several machines).")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a built-in model ({', '.join(BUILTIN_MODELS)}) or a folder trained on the same world "
                        f"(default {DEFAULT_MODEL})")
    p.add_argument("--quantize", "-q", default=None, metavar="SPEC",
                   help="also evaluate the transformer quantized at SPEC: BITS[:METHOD[:GROUP]], e.g. 4, 3:hqq, "
                        "2:gptq:32 (gptq and awq calibrate first on captions that are not eval prompts)")
    p.add_argument("--precisions", default=None, metavar="LIST",
                   help="comma-separated precisions to evaluate, e.g. 8,6,5,4,3 or 4,4:mse,3:hqq:32 (the unquantized model, "
                        "also named bf16 or unquantized, is always included as the reference; default: it alone)")
    p.add_argument("--limit", type=arguments.whole(1, 1_000_000, "--limit"), default=None, metavar="N", help="only the first N prompts")
    p.add_argument("--steps", type=arguments.steps, default=None, help="1 to 1000 (default: the model's)")
    p.add_argument("--guidance", type=arguments.guidance, default=None, help="default: the model's (base models only)")
    add_calibration_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON document on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def parse_precisions(precisions: str | None, quantize: str | None) -> tuple[str, ...]:
    """('unquantized', '8', '3:hqq:32', ...): the unquantized reference first, then each precision once, in the
    order given."""
    names = [UNQUANTIZED]
    requested = [] if precisions is None else [p.strip() for p in precisions.split(",") if p.strip()]
    if precisions is not None and not requested:
        raise InvalidRequest("--precisions is empty: give e.g. unquantized,8,4")
    if quantize is not None:
        requested.append(quantize)
    for value in requested:
        spec = parse_spec(value)
        name = UNQUANTIZED if spec is None else str(spec)
        if name not in names:
            names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class Drawing:
    """Every eval prompt's picture, and MLX's peak memory over all of them: each generation resets MLX's
    peak counter as each of its phases starts, so the counter read after the last picture would hold only
    that picture's decode."""
    images: list[np.ndarray]
    peak_memory: int


def _rgb(result) -> np.ndarray:
    return np.asarray(result.image.convert("RGB"))


class EvalSet:
    """The eval prompts of a built-in model (or one trained on its world): drawn at 64x64 with the model's
    steps and guidance, seed = the prompt's index, scored by the analyser and against reference pictures."""

    def __init__(self, model: str | Path, limit: int | None = None, steps: int | None = None,
                 guidance: float | None = None):
        from quantbench.core.builtin.captions import PHRASINGS, caption
        from quantbench.core.builtin.world import HELDOUT_COMBINATIONS, eval_prompts
        from quantbench.core.pipelines import model_defaults, validate_request
        if limit is not None and limit < 1:
            raise InvalidRequest(f"--limit {limit}: give 1 or more prompts")
        self.model = model
        self.folder = resolve_model_folder(model, allow_download=False)
        refuse_saved_transformer(self.folder, "eval")  # its reference is the full-precision pictures
        self.defaults = model_defaults(self.folder)
        self.steps = steps or self.defaults.steps
        self.guidance = validate_request(self.folder, self.defaults, None, guidance, IMAGE_SIZE, IMAGE_SIZE,
                                         self.steps)
        self.scenes = eval_prompts()[:limit]
        self.prompts = [caption(scene, i % PHRASINGS) for i, scene in enumerate(self.scenes)]
        self.heldout = [(s.colour, s.shape) in HELDOUT_COMBINATIONS for s in self.scenes]

    def draw(self, pipeline, say: Callable[[str], None] = lambda message: None, label: str = "",
             summaries: list[RankSummary] | None = None) -> Drawing:
        """The pictures of every prompt and MLX's peak over all of them; under mlx.launch each rank draws its
        share and every rank gets all the pictures and the largest rank's peak."""
        done, mine = [], len(available().mine(len(self.prompts)))

        def draw(i: int) -> dict:
            done.append(i)
            result = self.generate_one(pipeline, i)
            self.say_progress(say, label, len(done), mine)
            return {"image": _rgb(result), "peak_memory": result.peak_memory}

        drawn = split_runs(len(self.prompts), draw, what="eval", label=str, summaries=summaries)
        return Drawing([d["image"] for d in drawn], max(d["peak_memory"] for d in drawn))

    def say_progress(self, say: Callable[[str], None], label: str, done: int, total: int) -> None:
        """"demo 4: 25/125 images", every PROGRESS_EVERY pictures and at the last one."""
        if done % PROGRESS_EVERY == 0 or done == total:
            say(f"{Path(str(self.model)).name} {label}: {done}/{total} images")

    def draw_one(self, pipeline, i: int) -> np.ndarray:
        """Prompt i's picture (seed i) as RGB pixels."""
        return _rgb(self.generate_one(pipeline, i))

    def generate_one(self, pipeline, i: int):
        """Prompt i's generation (seed i): its picture and its memory figures."""
        return pipeline.generate(self.prompts[i], None, self.steps, None if self.defaults.distilled else self.guidance,
                                 seed=i, width=IMAGE_SIZE, height=IMAGE_SIZE, preview=False)

    def score(self, images: list[np.ndarray], reference: list[np.ndarray] | None) -> dict:
        """Attribute accuracy (all, held-out pairs, seen pairs); PSNR of the pooled squared error and mean SSIM
        against `reference` (None: these are the reference)."""
        return self.summarise([self.score_one(i, image, None if reference is None else reference[i])
                               for i, image in enumerate(images)], compared=reference is not None)

    def score_one(self, i: int, image: np.ndarray, reference: np.ndarray | None) -> dict:
        """Picture i read by the analyser, and its mean squared error and SSIM against `reference`."""
        from quantbench.core.builtin.analyser import analyse
        from quantbench.core.metrics import ssim
        record = {"analysis": analyse(image, self.scenes[i]), "error": None, "ssim": None}
        if reference is not None:
            record["error"] = float(np.mean((image.astype(np.float64) - reference) ** 2))
            record["ssim"] = float(ssim(image, reference))
        return record

    def summarise(self, records: list[dict], compared: bool) -> dict:
        """A row's figures from every picture's score_one record, in prompt order."""
        from quantbench.core.builtin.analyser import attribute_accuracy
        results = [r["analysis"] for r in records]
        row = {
            "accuracy": _rounded(attribute_accuracy(results)),
            "heldout": _rounded(attribute_accuracy([r for r, h in zip(results, self.heldout) if h]))
            if any(self.heldout) else None,
            "seen": _rounded(attribute_accuracy([r for r, h in zip(results, self.heldout) if not h]))
            if not all(self.heldout) else None,
            "psnr": None, "ssim": None, "identical_images": None,
        }
        if compared:
            errors = [r["error"] for r in records]
            pooled = float(np.mean(errors))
            row["psnr"] = math.inf if pooled == 0 else round(10 * math.log10(255 ** 2 / pooled), 3)
            row["ssim"] = round(float(np.mean([r["ssim"] for r in records])), 5)
            row["identical_images"] = sum(e == 0 for e in errors)
        return row

    def describe(self) -> dict:
        return {"model": str(self.model), "folder": str(self.folder), "distilled": self.defaults.distilled,
                "steps": self.steps, "guidance": None if self.defaults.distilled else self.guidance,
                "width": IMAGE_SIZE, "height": IMAGE_SIZE, "prompts": len(self.prompts),
                "heldout_prompts": int(sum(self.heldout)), "seeds": f"0..{len(self.prompts) - 1}"}


def evaluate(model: str | Path, precisions: tuple[str, ...] = (UNQUANTIZED,), limit: int | None = None,
             steps: int | None = None, guidance: float | None = None,
             progress: Callable[[str], None] | None = None, calibration=None) -> dict:
    """Run the eval prompts at each precision; the first precision must be the unquantized reference.
    `calibration` (quant.calibration.CalibrationOptions) is for the methods that calibrate.

    Under mlx.launch each rank draws and scores prompts i % N == rank at every precision (its unquantized pictures
    are the reference for its own prompts), and the ranks exchange only the per-picture scores, once at the
    end: no picture travels, and no rank waits for another between precisions."""
    from quantbench.core.builtin.analyser import ATTRIBUTES

    precisions = tuple(UNQUANTIZED if parse_spec(p) is None else p for p in precisions)  # 'bf16', 'none' too
    if not precisions or precisions[0] != UNQUANTIZED:
        raise InvalidRequest("the eval needs the unquantized model first: it is the reference the quantized pictures "
                             "are compared with")
    specs = [parse_spec(p) for p in precisions]
    eval_set = EvalSet(model, limit, steps, guidance)
    w = available()
    own = _draw_and_score_share(eval_set, precisions, specs, w, progress or (lambda message: None), calibration)
    shares = gather_shares(w, own, what="eval", own_seconds=sum(p["summary"]["seconds"] for p in own.values()))
    rows = []
    for name, spec in zip(precisions, specs):
        records = {int(i): r for share in shares for i, r in share[name]["records"].items()}
        drawing = max(share[name]["drawing_seconds"] for share in shares)  # the ranks draw at the same time
        rows.append({"precision": name, "bits": None if spec is None else spec.bits,
                     "method": None if spec is None else spec.method,
                     "group_size": None if spec is None else spec.group_size,
                     **eval_set.summarise([records[i] for i in range(len(eval_set.prompts))], compared=spec is not None),
                     "seconds_per_image": round(drawing / len(eval_set.prompts), 4)})
    summaries = {name: [RankSummary.from_dict(share[name]["summary"]) for share in shares] for name in precisions}
    return {**eval_set.describe(), "attributes": list(ATTRIBUTES), "results": rows,
            **distributed_section(merge_summaries(summaries))}


def _draw_and_score_share(eval_set: EvalSet, precisions: tuple[str, ...], specs: list, w: World,
                          say: Callable[[str], None], calibration) -> dict:
    """This rank's prompts at every precision: {precision: {"records": {i: score_one record}, "summary",
    "drawing_seconds"}}, each picture scored as it is drawn against this rank's own unquantized picture of prompt i."""
    from quantbench.core.pipelines import load_pipeline
    mine = w.mine(len(eval_set.prompts))
    reference: dict[int, np.ndarray] = {}
    own = {}
    for name, spec in zip(precisions, specs):
        say(f"{Path(str(eval_set.model)).name} {name}: loading")
        with phase("load"):
            pipeline = load_pipeline(eval_set.folder, quantize=spec, allow_download=False, calibration=calibration)
        own[name] = _draw_and_score(eval_set, pipeline, mine, reference, spec is None,
                                    lambda done, name=name: eval_set.say_progress(say, name, done, len(mine)))
        del pipeline
    return own


def _draw_and_score(eval_set: EvalSet, pipeline, mine: list[int], reference: dict[int, np.ndarray],
                    is_reference: bool, progress: Callable[[int], None]) -> dict:
    drawing: list[float] = []

    def draw_and_score(i: int) -> dict:
        started = time.perf_counter()
        with phase("draw"):
            image = eval_set.draw_one(pipeline, i)
        drawing.append(time.perf_counter() - started)
        if is_reference:
            reference[i] = image
        with phase("score"):
            record = eval_set.score_one(i, image, None if is_reference else reference[i])
        progress(len(drawing))
        return record

    records, summary = run_share(mine, draw_and_score)
    return {"records": {str(i): r for i, r in records.items()}, "summary": summary.to_dict(),
            "drawing_seconds": sum(drawing)}


def _rounded(accuracy: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in accuracy.items()}


def format_table(report: dict) -> list[str]:
    kind = "distilled" if report["distilled"] else f"base, CFG {report['guidance']:g}"
    lines = [f"{report['model']} ({kind}, {report['steps']} steps) on {report['prompts']} eval prompts "
             f"({report['heldout_prompts']} with held-out pairs), {report['width']}x{report['height']}, "
             f"seeds {report['seeds']}"]
    header = (f"{'precision':<14} {'mean':>6} {'all':>6} {'held-out':>8} {'shape':>6} {'colour':>6} {'size':>6} "
              f"{'position':>8} {'backgr.':>7} {'PSNR dB':>8} {'SSIM':>7} {'s/img':>6}")
    lines += [header, "-" * len(header)]
    for row in report["results"]:
        a = row["accuracy"]
        held = "-" if row["heldout"] is None else f"{row['heldout']['mean']:.1%}"
        if row["psnr"] is None:
            psnr, ssim_text = "ref", "ref"
        else:
            psnr = "inf" if row["psnr"] == math.inf else f"{row['psnr']:.2f}"
            ssim_text = f"{row['ssim']:.4f}"
        label = row["precision"] if row["bits"] is None else parse_spec(row["precision"]).label
        lines.append(f"{label:<14} {a['mean']:>6.1%} {a['all']:>6.1%} {held:>8} {a['shape']:>6.1%} "
                     f"{a['colour']:>6.1%} {a['size']:>6.1%} {a['position']:>8.1%} {a['background']:>7.1%} "
                     f"{psnr:>8} {ssim_text:>7} {row['seconds_per_image']:>6.3f}")
    lines.append("mean: the five attributes averaged; all: pictures with every attribute right; held-out: mean "
                 "over prompts with held-out pairs; PSNR/SSIM: against the unquantized pictures of the same seeds")
    return lines + rank_lines(report.get("distributed", {}).get("ranks", []))


def run(args: argparse.Namespace) -> int:
    precisions = parse_precisions(args.precisions, args.quantize)
    if args.limit is not None and args.limit < 1:
        raise InvalidRequest(f"--limit {args.limit}: give 1 or more prompts")
    report = evaluate(args.model, precisions, args.limit, args.steps, args.guidance,
                      progress=None if args.quiet else rank_say, calibration=calibration_options(args, precisions))
    if not world().is_leader:  # under mlx.launch, rank 0 alone prints
        return 0
    if args.json:
        for row in report["results"]:  # JSON has no infinity: identical pictures are reported as null + a flag
            if row["psnr"] == math.inf:
                row["psnr"], row["psnr_infinite"] = None, True
    with phase("print and write"):
        emit(report, args.json, format_table(report))
    return 0
