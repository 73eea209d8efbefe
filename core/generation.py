"""What every family's generation loop shares: requests, per-step reports, cancellation, results."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import numpy as np

from .errors import InvalidRequest
from .memory import MemorySnapshot

MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 16, 4096, 16


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
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    total_seconds: float = 0.0
    peak_memory: int = 0  # MLX peak bytes during the run (the largest phase)
    peak_rss: int = 0
    phase_peaks: dict[str, int] = field(default_factory=dict)  # MLX peak bytes per phase: encode, denoise...
    pixels: "object" = None  # the decoded image before rounding: (H, W, 3) float32 in [-1, 1]

    def settings(self) -> dict:
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed,
                "steps": self.steps, "guidance": self.guidance, "width": self.width, "height": self.height}


def check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if value % SIZE_MULTIPLE or not MIN_SIZE <= value <= MAX_SIZE:
            raise InvalidRequest(f"{name} {value} is not allowed: use a multiple of {SIZE_MULTIPLE} "
                                 f"between {MIN_SIZE} and {MAX_SIZE}")


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
