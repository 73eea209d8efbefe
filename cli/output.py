"""Printing results: a short human summary, or one JSON document with --json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from quantbench.core import numbers
from quantbench.core.errors import InvalidRequest

from . import arguments


_emitted = False  # the command's own document went to stdout (a later failure adds no JSON error object)


def emit(data: dict, as_json: bool, lines: list[str]) -> None:
    global _emitted
    text = json.dumps(data, indent=2) if as_json else "\n".join(lines)
    try:
        _emitted = True  # set first: a write that fails part way must not be followed by a second document
        sys.stdout.write(text + "\n")
        sys.stdout.flush()  # here, not at exit: a full disk (`> /dev/full`) is one line, not an ignored exception
    except BrokenPipeError:
        raise  # the reader went away (`| head`): the CLI stops quietly
    except OSError as exc:
        raise InvalidRequest(f"cannot write the output to standard output: {exc.strerror or exc}") from None


def begin_command() -> None:
    """A new command (main() runs several in one process in the tests): nothing written to stdout yet."""
    global _emitted
    _emitted = False


def emit_error(args, line: str, code: int) -> None:
    """A failed command asked for --json: besides its one line on stderr, one JSON object on stdout,
    {"error": LINE, "exit_code": CODE}, so that a script reading stdout always gets a document. Not when the
    command's own document was written (or began to be), nor from ranks other than 0 under mlx.launch."""
    global _emitted
    wanted = getattr(args, "json", False) is True or getattr(args, "show_json", False) is True
    if not wanted or _emitted or sys.stdout is None or os.environ.get("MLX_RANK", "0") != "0":
        return
    _emitted = True
    try:
        sys.stdout.write(json.dumps({"error": line, "exit_code": code}) + "\n")
        sys.stdout.flush()
    except OSError:  # a stdout that cannot be written (`> /dev/full`, a reader gone): the stderr line stands
        pass


def progress(message: str, quiet: bool) -> None:
    """Progress goes to stderr so that stdout stays clean for --json."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    """--text-encoder-layers '9,18,27' -> (9, 18, 27); None keeps the model's own."""
    if value is None:
        return None
    try:
        return tuple(numbers.whole(v) for v in value.split(","))
    except ValueError:
        raise InvalidRequest(f"--text-encoder-layers '{value}': give comma-separated integers, e.g. 9,18,27") from None


CALIBRATION_HELP = ("calibration prompts for methods that calibrate (gptq, awq): a text file, one prompt per line "
                    "(default: the model's own; the built-in models draw captions of their world that are not "
                    "among eval's); refused where no precision chosen calibrates")


QUANTIZE_HELP = ("transformer precision: BITS[:METHOD[:GROUP]] with bits 8, 6, 5, 4, 3 or 2, method rtn (default), "
                 "mse, hqq, or gptq or awq (which calibrate first on the model's own prompts: see "
                 "--calibration-prompts), group 32, 64 (default) or 128 (e.g. 4, 4:mse, 3:gptq:32); auto:BITS or "
                 "auto:SIZE, optionally :METHOD[:GROUP], for a mixed plan searched on probe pictures first (e.g. "
                 "auto:4.5, auto:2.5:hqq, auto:2GB; minutes on a large model); or a plan file from `quantbench plan`")


TEXT_ENCODER_SPEC = ("BITS[:METHOD[:GROUP]] with a method that needs no calibration (rtn, mse or hqq: gptq and awq "
                     "calibrate the transformer only)")


def add_quantize_argument(parser, required: bool = False, default: str = "") -> None:
    """--quantize as the commands that load a model take it; `default` says what leaving it out does."""
    parser.add_argument("--quantize", "-q", required=required, default=None, metavar="SPEC",
                        help=QUANTIZE_HELP + (f" (default: {default})" if default else ""))


def add_lora_argument(parser) -> None:
    """--lora, as every command that loads a model to run it takes it (repeatable)."""
    parser.add_argument("--lora", type=arguments.lora, action="append", default=[], metavar="FILE[:STRENGTH]",
                        help="a LoRA to fuse into the weights as they load, before quantizing: a .safetensors file "
                             "(or a folder holding one) in diffusers', the original code's (diffusion_model.) or "
                             "kohya's (lora_unet_) layout, or a Hugging Face repo id (owner/name: quantbench download "
                             "--lora fetches it, as generate, save and compare do unless --offline), at STRENGTH -10 "
                             "to 10 (default 1); repeat for several")


def add_size_arguments(parser) -> None:
    """--width and --height, as every command that draws a picture takes them."""
    parser.add_argument("--width", type=arguments.dimension("width"), default=None,
                        help="a multiple of 16 from 16 to 4096 (default: the first --image's width, else the model's "
                             "native size, 64 for the built-in models, else 1024)")
    parser.add_argument("--height", type=arguments.dimension("height"), default=None,
                        help="a multiple of 16 from 16 to 4096 (default: the first --image's height, else as --width)")


def add_reference_argument(parser) -> None:
    """--image, as every command that draws an edit takes it (repeatable)."""
    parser.add_argument("--image", action="append", default=[], type=arguments.reference_image, metavar="FILE",
                        help="FLUX.2 only: a reference image to edit from or draw on (repeatable, up to 10; PNG, JPEG, "
                             "WebP... at least 64 px a side, scaled down to 1024x1024 px of area and cropped to "
                             "multiples of 16); --width and --height default to the first image's size")


def add_calibration_argument(parser) -> None:
    parser.add_argument("--calibration-prompts", type=Path, default=None, metavar="FILE", help=CALIBRATION_HELP)


def calibration_prompts(args, precisions) -> tuple[str, ...] | None:
    """The --calibration-prompts file's prompts (read now, so a bad one fails before loading), or None for the
    model's own; refused in one line when none of `precisions` (PrecisionSpecs) calibrates."""
    from quantbench.core.lab.precisions import refuse_unused_calibration_prompts
    from quantbench.core.quant.calibration import read_prompt_file
    file = getattr(args, "calibration_prompts", None)
    refuse_unused_calibration_prompts(file, precisions)
    return tuple(read_prompt_file(file)) if file is not None else None


def calibration_options(args, precisions, quiet: bool | None = None, cancel=None):
    """The CalibrationOptions of a command: its prompts (calibration_prompts; `precisions` are the --quantize or
    --precisions values given), progress lines on stderr (none if `quiet`, default: the command's --quiet) and a
    warning line, quiet or not, for prompts the text encoder reads only in part (rank 0 alone under mlx.launch)."""
    from quantbench.core.distributed import say, world
    from quantbench.core.lab.precisions import parse_precisions
    from quantbench.core.quant.calibration import CalibrationOptions, throttled
    prompts = calibration_prompts(args, parse_precisions([p for p in precisions if p is not None] or ["bf16"]))
    quiet = getattr(args, "quiet", False) if quiet is None else quiet

    def warn(line: str) -> None:
        if world().is_leader:
            progress(f"quantbench: warning: {line}", False)

    return CalibrationOptions(prompts_file=getattr(args, "calibration_prompts", None), prompts=prompts,
                              progress=throttled(lambda state: say(state.line(), quiet)), cancel=cancel, warn=warn)
