"""quantbench recommend: per model, the best precision that fits this machine (or --ram GB)."""

from __future__ import annotations

import argparse
import shlex
import textwrap

from quantbench.core import numbers
from quantbench.core.builtin import EXAMPLE_PROMPT as BUILTIN_EXAMPLE_PROMPT
from quantbench.core.builtin import is_builtin_model
from quantbench.core.catalog import get_entry, precision_label
from quantbench.core.errors import InvalidRequest
from quantbench.core.generation import check_size
from quantbench.core.hardware import detect
from quantbench.core.hosts import parse_hosts
from quantbench.core.memory_model import GiB, default_dtype, entry_facts, predict
from quantbench.core.recommend import (COMFORTABLE_FRACTION, Recommendation, budget_from_gb, budget_from_hardware,
                                       candidate_plans, check_ram_gb, expected_quality, recommend)
from quantbench.core.sources import user_path

from .output import emit

WIDTH = 80
STATUS = {"fits": "yes", "tight": "tight", "too big": "no", "not shipped": "-"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("recommend", help="which models fit this machine, at which precision",
                              description="For each catalog model: the best precision that fits with headroom "
                                          "for the OS, the predicted peak memory, the expected quality, and what "
                                          "to watch for.")
    p.add_argument("--ram", default=None, metavar="GB",
                   help="memory of the machine to plan for, in GB: a Mac's unified memory, or a CUDA card's "
                        "(default: this machine's)")
    p.add_argument("--hosts", default=None, metavar="NxGB|GB,GB|HOSTFILE",
                   help="plan for several machines with the transformer split across them (tensor-parallel "
                        "generate under mlx.launch): N hosts of GB each (2x16), each host's GB (16,24), or an "
                        "mlx.launch hostfile whose hosts carry \"memory_gb\"; figures are per host, and the "
                        "smallest host decides")
    p.add_argument("--model", default=None, help="one model: a catalog id (klein-4b, ...) or its repo id")
    p.add_argument("--size", default=None, metavar="WxH", help="image size (default: the model's, 1024x1024)")
    p.add_argument("--backend", default=None, choices=("metal", "cuda", "cpu"),
                   help="MLX backend to predict for (default: this machine's; metal with --ram)")
    p.add_argument("--json", action="store_true", help="print JSON (bytes)")
    p.set_defaults(run=run)


def parse_ram(value: str) -> float:
    try:
        ram = numbers.decimal(value)
    except ValueError:
        raise InvalidRequest(f"--ram '{value}': give the machine's memory in GB, e.g. --ram 16") from None
    return check_ram_gb(ram, value)


def parse_size(value: str | None) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    try:
        w, h = (numbers.whole(v) for v in value.lower().split("x"))
    except ValueError:
        raise InvalidRequest(f"--size '{value}': give WIDTHxHEIGHT, e.g. 1024x1024") from None
    try:
        check_size(w, h)  # the sizes `generate` accepts
    except InvalidRequest as exc:
        raise InvalidRequest(f"--size {value}: {exc}") from None
    return w, h


def gb(n: float) -> str:
    """One decimal, in GB; a model under 0.1 GB (the built-in ones) in MB rather than '0.0 GB'."""
    return f"{n / GiB:.1f} GB" if n >= GiB / 10 else f"{n / 2**20:.1f} MB"


def _measures(plan) -> str:
    parts = []
    te = {"resident": "", "evict": "TE freed", "staged": "TE alone"}[plan.text_encoder]
    if plan.text_encoder_bits is not None:
        te = f"TE {precision_label(plan.text_encoder_bits)}" + (f" {te.split()[1]}" if te else "")
    if te:
        parts.append(te)
    if plan.vae_tiling:
        parts.append(f"tiled {plan.tile_size}")
    return ", ".join(parts) or "as is"


def shell_lines(argv: list[str], width: int = WIDTH) -> list[str]:
    """A command to copy into a shell, indented, broken with backslashes to stay within `width` columns, never
    between an option and its value."""
    units: list[str] = []
    for word in map(shlex.quote, argv):
        if units and not word.startswith("-") and units[-1].startswith("-") and " " not in units[-1]:
            units[-1] += " " + word
        else:
            units.append(word)
    lines, line = [], "  "
    for unit in units:
        if line.strip() and len(line) + 1 + len(unit) + 2 > width:
            lines.append(line + " \\")
            line = "    "
        line += ("" if not line.strip() else " ") + unit
    return [*lines, line]


def example_prompt(model: str) -> str:
    """A prompt for the command recommend prints: the built-in models draw only the scenes they were trained on."""
    return BUILTIN_EXAMPLE_PROMPT if is_builtin_model(model) else "a red fox in the snow"


def ram_label(n: int) -> str:
    value = n / GiB
    return f"{value:.0f} GB" if abs(value - round(value)) < 0.05 else f"{value:.1f} GB"


def _other_sizes(rec: Recommendation) -> list[str]:
    """The models advised at another size than the header's (their own default size), one line a size."""
    others: dict[tuple[int, int], list[str]] = {}
    for a in rec.advice:
        if a.plan is not None and (a.plan.width, a.plan.height) != (rec.width, rec.height):
            others.setdefault((a.plan.width, a.plan.height), []).append(a.entry.id)
    return textwrap.wrap("; ".join(f"{', '.join(ids)} at {w}x{h}, {'its' if len(ids) == 1 else 'their'} own size"
                                   for (w, h), ids in others.items()), WIDTH)


def render(rec: Recommendation, source: str, launcher: tuple[str, ...] = ()) -> list[str]:
    """recommend's text; launcher: what the printed command runs under (mlx.launch's arguments, for --hosts)."""
    b = rec.budget
    out = [f"{ram_label(b.ram)} of memory ({source}), {rec.backend} backend, {rec.width}x{rec.height}",
           f"budget {gb(b.comfortable)} ({COMFORTABLE_FRACTION:.0%} of RAM), {gb(b.tight)} tight ({b.tight_rule})",
           "peak = predicted MLX memory (1 GB = 2^30 bytes)", *_other_sizes(rec), ""]
    w = max(15, *(len(a.entry.id) + 1 for a in rec.advice))  # 80 columns with the longest id
    out.append(f"{'model':<{w}}{'fits':<6}{'prec':<6}{'peak':>8} {'quality':<16}how")
    for a in rec.advice:
        name = a.entry.id + ("" if a.entry.runnable or not a.entry.shipped else "*")
        if a.status == "not shipped":
            out.append(f"{name:<{w}}{'-':<6}not yet shipped")
            continue
        peak = gb(a.prediction.generation_peak)
        if a.status == "too big":
            how = f"needs {a.needs_gb} GB" if a.needs_gb else "needs > 512 GB"
            out.append(f"{name:<{w}}{'no':<6}{'-':<6}{peak:>8} {'-':<16}{how}")
            continue
        out.append(f"{name:<{w}}{STATUS[a.status]:<6}{a.precision:<6}{peak:>8} {a.quality.label:<16}"
                   f"{_measures(a.plan)}")
    out.append("")
    if rec.best_runnable:
        best = rec.get(rec.best_runnable)
        out.append(f"Best pick: {best.entry.id} at {best.precision} ({_measures(best.plan)}). To run it:")
        out.extend(shell_lines([*launcher, "quantbench", "generate", *best.generate_arguments(),
                                "--prompt", example_prompt(best.entry.id), "--out", "image.png"]))
    if rec.best_overall and rec.best_overall != rec.best_runnable:
        best = rec.get(rec.best_overall)
        out.append(f"Best once its engine exists: {best.entry.id} at {best.precision}.")
    if any(not a.entry.runnable and a.entry.shipped for a in rec.advice):
        out.append("* no engine in quantbench yet: figures are predictions.")
    if any(a.plan is not None and _measures(a.plan) != "as is" for a in rec.advice):
        out.extend(textwrap.wrap(
            "how: TE = text encoder. TE alone = loaded only to encode, freed before the transformer loads "
            "(what generate does unless --keep-text-encoder); TE freed = freed after encoding; TE q8 = "
            "--text-encoder-quantize 8; tiled N = the VAE decodes in N-pixel tiles (--vae-tile N; "
            "--low-memory tiles at 512).", WIDTH))
    unquantized = {a.precision for a in rec.advice if a.plan is not None and not a.precision.startswith(("q", "mixed"))}
    if unquantized:
        out.extend(textwrap.wrap(f"prec: qN = the transformer at N bits; {' / '.join(sorted(unquantized))} = "
                                 "unquantized, held and computed in that dtype.", WIDTH))
    if rec.prompt_note:
        out.extend(textwrap.wrap(f"prompt: {rec.prompt_note}.", WIDTH))
    noted = [a for a in rec.advice if a.warnings and a.status != "not shipped"]
    if noted:
        out.append("")
        for a in noted:
            out.extend(textwrap.wrap(f"{a.entry.id}: " + "; ".join(a.warnings) + ".", WIDTH,
                                     subsequent_indent="  "))
    return out


def precision_table(rec: Recommendation, ranks: int = 1) -> list[str]:
    """For a single model: every sensible precision with its smallest plan."""
    advice = rec.advice[0]
    entry, budget = advice.entry, rec.budget
    if not entry.components:
        return []
    out = ["", f"{entry.name}, every precision with the plan that needs least memory",
           f"{'prec':<6}{'fits':<6}{'peak':>8} {'load bf16':>9} {'pre-quant':>9}  {'quality':<15}how"]
    dtype = default_dtype(rec.backend)
    for bits in entry.precisions:
        plans = candidate_plans(entry, bits, rec.width, rec.height, rec.backend, dtype, ranks=ranks)
        best = min((predict(entry, plan) for plan in plans), key=lambda pr: pr.generation_peak)
        peak = best.generation_peak
        fits = "yes" if peak <= budget.comfortable else "tight" if best.peak <= budget.tight else "no"
        out.append(f"{precision_label(bits, dtype):<6}{fits:<6}{gb(peak):>8} {gb(best.load_peaks['streamed']):>9} "
                   f"{gb(best.load_peaks['prequantized']):>9}  {expected_quality(entry, bits).label:<15}"
                   f"{_measures(best.plan)}")
    out.extend(textwrap.wrap("load bf16 = loading the bf16 checkpoint, each layer quantized as it is read (as "
                             "quantbench does); pre-quant = loading a saved quantized copy.", WIDTH))
    return out


def launcher_for(hostfile: str) -> tuple[str, ...]:
    """mlx.launch's arguments for running on the hosts `hostfile` names (README: Across several machines)."""
    return ("mlx.launch", "--hostfile", hostfile, "--backend", "ring", "--")


def run(args: argparse.Namespace) -> int:
    width, height = parse_size(args.size)
    if args.model:
        get_entry(args.model)  # unknown models are refused before anything else
    hardware = None
    ranks = 1
    if args.hosts is not None:
        if args.ram is not None:
            raise InvalidRequest("give --ram or --hosts, not both (--hosts carries each host's memory)")
        sizes = parse_hosts(args.hosts)
        ranks = len(sizes)
        hosts = f"the smallest of {ranks} hosts" if ranks > 1 else "one host"
        backend, source = args.backend or "metal", f"{hosts}, --hosts {args.hosts}"
        budget = budget_from_gb(min(sizes), unified=backend == "metal")
    elif args.ram is not None:
        backend, source = args.backend or "metal", "--ram"
        budget = budget_from_gb(parse_ram(args.ram), unified=backend == "metal")
    else:
        hardware = detect()
        budget = budget_from_hardware(hardware)
        backend, source = args.backend or hardware.backend, "detected"
    rec = recommend(budget=budget, model=args.model, width=width, height=height, backend=backend,
                    dtype=default_dtype(backend), ranks=ranks)
    # --hosts gave a hostfile, or sizes (2x16): then the command names the user's own hostfile
    given_hostfile = args.hosts is not None and user_path(args.hosts).is_file()
    lines = render(rec, source, launcher_for(args.hosts if given_hostfile else "hosts.json") if ranks > 1 else ())
    if ranks > 1:
        lines += textwrap.wrap(
            f"Per host, with the transformer split across {ranks} ranks (mlx.launch; quantbench generate splits "
            f"attention heads and MLP units, each rank holding about 1/{ranks}); the text encoder and the VAE run "
            "whole on every rank. The lab's sweeps (compare, eval) split runs, not the model: each host needs "
            "the whole model, as recommend --ram GB says."
            + ("" if given_hostfile else " In the command above, hosts.json stands for your mlx.launch hostfile."),
            WIDTH)
    if args.model:
        lines += precision_table(rec, ranks)
    data = rec.to_dict()
    if args.model:
        data["catalog"] = entry_facts(rec.advice[0].entry)
    if hardware is not None:
        data["hardware"] = hardware.to_dict()
    if ranks > 1:
        data["hosts"] = {"count": ranks, "memory_gb": sizes, "per_rank": True}
    emit(data, args.json, lines)
    return 0
