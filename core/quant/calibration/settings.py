"""What calibration draws: its prompts (the model's default, or a file), size, steps, and the options a caller passes."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ...errors import InvalidRequest
from ...generation import CancelToken

# A varied list for models trained on natural images (no data set is downloaded).
GENERAL_PROMPTS = (
    "a photo of a cat sitting on a window sill in the afternoon sun",
    "a city street at night with neon signs reflected in the rain",
    "a bowl of fruit on a wooden table, studio lighting",
    "a watercolor painting of mountains above a misty lake at dawn",
    "portrait of an old fisherman with a grey beard, dramatic light",
    "an isometric illustration of a tiny cozy bedroom, pastel colors",
    "a red vintage car parked in front of a brick wall",
    "macro photograph of a dew drop on a green leaf",
    "a bustling market in Marrakech with spices and colorful fabrics",
    "a minimalist logo of a fox made of orange triangles on white",
    "an astronaut riding a horse on the moon, digital art",
    "a snowy forest cabin with warm light in the windows at dusk",
    "close-up of a hand-written letter and a fountain pen on paper",
    "a sailing boat on a stormy sea, oil painting",
    "a plate of sushi on a black slate, top-down view",
    "a futuristic city skyline with flying cars under a purple sky",
)
BUILTIN_PROMPTS = 16
BUILTIN_SEED = 2024  # the calibration scenes' generator seed (eval's scenes are fixed and excluded)
SEED_OFFSET = 10_000  # calibration prompt i is drawn with seed SEED_OFFSET + i
GENERAL_SIZE = 512  # pixels; the built-in models calibrate at their native size
RECORDED_STEPS = 5  # of a longer schedule, this many steps (evenly spaced) are recorded
MAX_PROMPT_FILE_BYTES = 1 << 20  # a prompt list; a larger file is most likely the wrong one


def builtin_prompts(count: int = BUILTIN_PROMPTS) -> list[str]:
    """Captions of random world scenes that are not eval scenes (nor held-out pairs), in every phrasing."""
    from ...builtin.captions import PHRASINGS, caption
    from ...builtin.world import eval_prompts, sample_scenes
    evaluated = set(eval_prompts())
    scenes = [s for s in sample_scenes(4 * count, BUILTIN_SEED, "train") if s not in evaluated]
    return [caption(scene, i % PHRASINGS) for i, scene in enumerate(scenes[:count])]


def read_prompt_file(path: Path | str) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped. Anything but a readable
    UTF-8 text file of at most MAX_PROMPT_FILE_BYTES (a folder, a device, a binary or huge file) is one line."""
    path = Path(path)
    problem = f"calibration prompts {path}"
    try:
        if not path.is_file():
            what = "a folder" if path.is_dir() else "not a regular file" if path.exists() else "no such file"
            raise InvalidRequest(f"{problem}: {what}; give a text file with one prompt per line")
        if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
            raise InvalidRequest(f"{problem}: {path.stat().st_size:,} bytes, more than a prompt list "
                                 f"(at most {MAX_PROMPT_FILE_BYTES:,}): is it the right file?")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{problem}: cannot be read as UTF-8 text ({exc.__class__.__name__})") from None
    if "\x00" in text:
        raise InvalidRequest(f"{problem}: a binary file, not text (one prompt per line)")
    prompts = [prompt for _, prompt in _numbered(text)]
    if not prompts:
        raise InvalidRequest(f"calibration prompts {path}: no prompts in the file (one per line)")
    return prompts


def _numbered(text: str) -> list[tuple[int, str]]:
    """(line number, prompt) of each line that holds a prompt."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def prompt_numbers(prompts: tuple[str, ...], prompts_file: Path | str | None) -> tuple[str, list[int]]:
    """How a message numbers the calibration prompts: by their lines in the file they were read from ("line", [2, 5,
    ...]), else by their places in the list ("prompt", [1, 2, ...]), also when the file no longer holds them."""
    if prompts_file is not None:
        try:
            numbered = _numbered(Path(prompts_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            numbered = []
        if tuple(prompt for _, prompt in numbered) == tuple(prompts):
            return "line", [number for number, _ in numbered]
    return "prompt", list(range(1, len(prompts) + 1))


def prompts_digest(prompts) -> str:
    """What a saved model records: sha256 of the prompts, one per line."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CalibrationSettings:
    prompts: tuple[str, ...]
    size: int  # pixels, square
    steps: int
    guidance: float | None = None  # None: the model's default
    sequential: bool = True  # later blocks see the quantized earlier ones (False: one pass, every X^T X at once)
    per_site: bool = True  # one pass per site (inputs shared by layers) rather than one per block
    recorded_steps: int | None = RECORDED_STEPS  # None: every step
    cache_outputs: bool | None = None  # keep one block's outputs for every call (None: on disk always, in
    # memory when they are small)
    on_disk: bool = True  # recorded calls and cached outputs in a temporary folder (False: in memory)

    def records_step(self, index: int) -> bool:
        if self.recorded_steps is None or self.recorded_steps >= self.steps:
            return True
        last = self.steps - 1
        return index in {round(i * last / max(self.recorded_steps - 1, 1)) for i in range(self.recorded_steps)}

    @property
    def recorded_count(self) -> int:
        """How many steps of each prompt are recorded."""
        return sum(self.records_step(i) for i in range(self.steps))

    def record(self, calls: int, seconds: float) -> dict:
        """What the quantization report (and a saved model) says about this calibration."""
        return {"prompts": len(self.prompts), "prompts_sha256": prompts_digest(self.prompts), "size": self.size,
                "steps": self.steps, "recorded_steps": min(self.recorded_steps or self.steps, self.steps),
                "calls": calls, "sequential": self.sequential, "seconds": round(seconds, 2)}


@dataclass
class CalibrationOptions:
    """What a caller may say about a calibration: its prompts, progress and cancel."""

    prompts_file: Path | str | None = None  # one prompt per line; default: the model's own prompts
    prompts: tuple[str, ...] | None = None  # instead of a file
    progress: Callable | None = None  # called with a CalibrationProgress after each unit of work
    warn: Callable[[str], None] | None = None  # told, as calibration begins, of prompts the text encoder cuts
    cancel: CancelToken | None = None
    size: int | None = None

    def with_prompts_read(self) -> "CalibrationOptions":
        """These options with the file's prompts read into `prompts` (a bad file is one line now), where a file was
        given alone: whoever checks or keys on the prompts (a saved model's, a loaded model's) sees them."""
        if self.prompts is not None or self.prompts_file is None:
            return self
        return replace(self, prompts=tuple(read_prompt_file(self.prompts_file)))

    def prompts_for(self, builtin: bool) -> tuple[str, ...]:
        if self.prompts:
            return tuple(self.prompts)
        if self.prompts_file is not None:
            return tuple(read_prompt_file(self.prompts_file))
        return tuple(builtin_prompts() if builtin else GENERAL_PROMPTS)


def settings_for(pipeline, options: CalibrationOptions | None = None) -> CalibrationSettings:
    """The calibration of `pipeline`'s model: the model's own prompts (or the options'), its default steps,
    its native size for the built-in models and GENERAL_SIZE for others."""
    from ...builtin import MODELS_FOLDER
    from ...builtin.world import IMAGE_SIZE
    options = options or CalibrationOptions()
    folder = Path(pipeline.info.folder).resolve()
    builtin = folder.parent == MODELS_FOLDER.resolve()
    size = options.size or (IMAGE_SIZE if builtin else GENERAL_SIZE)
    return CalibrationSettings(options.prompts_for(builtin), size, pipeline.default_steps)


_ACTIVE: ContextVar[CalibrationOptions | None] = ContextVar("calibration_options", default=None)


@contextmanager
def calibration_options(options: CalibrationOptions | None):
    """While inside, a transformer that loads and needs calibration uses `options` (load_pipeline sets
    this around a family's load, which may load the transformer before returning the pipeline)."""
    token = _ACTIVE.set(options)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_options() -> CalibrationOptions | None:
    return _ACTIVE.get()
