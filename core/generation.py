"""What every generation shares: the settings and the rules they follow, per-step reports, cancellation, results."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import mlx.core as mx
import numpy as np

from .errors import Cancelled, InvalidRequest
from .lora_request import lora_requests
from .reference_images import recorded_references, reference_path
from .memory import MemorySnapshot

MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 16, 4096, 16
MAX_STEPS = 1000
MAX_SEED = 2**64 - 1  # any seed a diffusers user might bring (torch takes 64-bit seeds)
MAX_GUIDANCE = 100.0  # far above any useful scale; larger ones overflow bfloat16 into a black picture


def check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        check_dimension(name, value)


def check_dimension(name: str, value) -> int:
    if not _is_int(value) or value % SIZE_MULTIPLE or not MIN_SIZE <= value <= MAX_SIZE:
        raise InvalidRequest(f"{name} {value} is not allowed: use a multiple of {SIZE_MULTIPLE} "
                             f"between {MIN_SIZE} and {MAX_SIZE}")
    return value


def check_steps(steps) -> int:
    if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
        raise InvalidRequest(f"steps {steps} is not allowed: use 1 to {MAX_STEPS}")
    return steps


def check_seed(seed) -> int:
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise InvalidRequest(f"seed {seed} is not allowed: use a whole number from 0 to 2**64-1")
    return seed


def check_scale(name: str, value) -> float:
    """A guidance or CFG scale: a finite number from 0 to MAX_GUIDANCE."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_GUIDANCE:
        shown = f"{value:g}" if isinstance(value, float) else value
        raise InvalidRequest(f"{name} {shown} is not allowed: use a number from 0 to {MAX_GUIDANCE:g}")
    return float(value)


def check_text(name: str, value: str) -> str:
    """Prompts reach the tokenizer as UTF-8; bytes that are not (from a shell in another locale) are refused."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"the {name} is not valid UTF-8 text (check the terminal's locale)") from None
    if "\x00" in value:
        raise InvalidRequest(f"the {name} contains a NUL character")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationSettings:
    """What one picture is asked for. The CLI, the workbench's form, the compare request and the history
    share it: a history line and a PNG's text chunks are `to_record()` plus the run's measurements.

    None means the model's default (steps, guidance, size: see core/generate.py); `quantize` is bits, a
    plan file or auto:BITS / auto:SIZE as the user wrote it.
    """

    model: str
    prompt: str
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    true_cfg: float = 1.0  # FLUX.1 [dev]: above 1, true CFG against the negative prompt (two passes a step)
    seed: int = 0
    width: int | None = None
    height: int | None = None
    quantize: int | str | None = None
    text_encoder_quantize: int | str | None = None
    text_encoder_layers: tuple[int, ...] | None = None
    dtype: str | None = None  # compute dtype; None: bfloat16 on a GPU, float32 on the CPU
    loras: tuple = ()  # LoRAs fused into the weights (core/lora_request.py: requests, FILE[:STRENGTH] or pairs)
    reference_images: tuple = ()  # reference images to edit from (paths; core/reference_images.py), for families that take them

    def validate(self) -> "GenerationSettings":
        """Refuse, in one line, what no model could run: the same rules as the command-line options."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequest("the prompt is empty")
        check_text("prompt", self.prompt)
        if self.negative_prompt is not None:
            check_text("negative prompt", self.negative_prompt)
        check_seed(self.seed)
        if self.steps is not None:
            check_steps(self.steps)
        if self.guidance is not None:
            check_scale("guidance", self.guidance)
        check_scale("true CFG", self.true_cfg)
        lora_requests(self.loras)
        for image in self.reference_images:
            reference_path(image)
        for name in ("width", "height"):
            if getattr(self, name) is not None:
                check_dimension(name, getattr(self, name))
        return self

    def to_record(self) -> dict:
        """The keys the history has always had (true CFG only when on), so old and new readers agree."""
        record = {f.name: getattr(self, f.name) for f in fields(GenerationSettings) if f.name != "dtype"}
        record["true_cfg"] = self.true_cfg if self.true_cfg != 1.0 else None
        record["text_encoder_layers"] = list(self.text_encoder_layers) if self.text_encoder_layers else None
        record["loras"] = [lora.to_record() for lora in lora_requests(self.loras)] or None
        record["reference_images"] = [str(reference_path(image)) for image in self.reference_images] or None
        return record

    @classmethod
    def from_record(cls, record: dict) -> "GenerationSettings":
        """Settings from a history line or PNG text chunks (old or new); unknown keys are ignored."""
        known = {f.name for f in fields(GenerationSettings)}
        values = {k: v for k, v in record.items() if k in known and v is not None}
        if "text_encoder_layers" in values:
            values["text_encoder_layers"] = tuple(values["text_encoder_layers"])
        if "loras" in values:
            values["loras"] = lora_requests(values["loras"])
        if "reference_images" in values:
            values["reference_images"] = recorded_references(values["reference_images"])
        return cls(**values)


class CancelToken:
    """Set from any thread; the generation loop checks it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class StepInfo:
    index: int  # 0-based
    total: int
    sigma: float
    seconds: float
    memory: MemorySnapshot
    preview: np.ndarray | None  # uint8 (h, w, 3): the denoised estimate x0, projected to RGB


StepCallback = Callable[[StepInfo], None]


@dataclass
class GenerationResult:
    image: "object"  # PIL.Image.Image
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    step_seconds: list[float] = field(default_factory=list)
    encode_seconds: float = 0.0  # the prompts' encoding, without loading the text encoder
    decode_seconds: float = 0.0
    load_seconds: float = 0.0  # components loaded during the run: the transformer, when the text encoder goes first
    total_seconds: float = 0.0  # all of the run, its loads included
    peak_memory: int = 0  # MLX peak bytes during the run (the largest phase)
    peak_rss: int = 0  # the process's largest resident set during the run (see memory.RssPeak)
    phase_peaks: dict[str, int] = field(default_factory=dict)  # MLX peak bytes per phase: encode, denoise...
    pixels: "object" = None  # the decoded image before rounding: (H, W, 3) float32 in [-1, 1]

    def settings(self, asked: GenerationSettings) -> GenerationSettings:
        """The settings this picture was drawn with: `asked`, with the model's defaults as the run resolved them."""
        return replace(asked, prompt=self.prompt, negative_prompt=self.negative_prompt, seed=self.seed,
                       steps=self.steps, guidance=self.guidance, width=self.width, height=self.height)


def default_compute_dtype() -> mx.Dtype:
    """bfloat16 where the GPU does it fast (Metal, CUDA); float32 on the CPU, where MLX's bfloat16
    and quantized kernels are many times slower."""
    on_gpu = mx.default_device() == mx.gpu and (
        mx.metal.is_available() or (hasattr(mx, "cuda") and mx.cuda.is_available()))
    return mx.bfloat16 if on_gpu else mx.float32


def parse_dtype(name: str | None) -> mx.Dtype:
    if name in (None, "", "auto"):
        return default_compute_dtype()
    table = {"float32": mx.float32, "fp32": mx.float32, "bfloat16": mx.bfloat16, "bf16": mx.bfloat16,
             "float16": mx.float16, "fp16": mx.float16}
    if name not in table:
        raise InvalidRequest(f"unknown dtype '{name}': choose float32, bfloat16 or float16")
    return table[name]


def initial_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The same seed gives the same noise on every platform (NumPy's PCG64, not a device RNG)."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]


def check_cancel(cancel: CancelToken | None) -> None:
    """Raise Cancelled when the run was asked to stop (checked between steps and phases)."""
    if cancel is not None and cancel.cancelled:
        raise Cancelled("cancelled")
