"""The workbench's side of the engine: keep a model loaded, run a request, save and record the result.

Plain Python with no Textual import, so it can be tested and reused on its own; the app calls it
from a thread worker and turns its callbacks into messages.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from quantbench.core import __version__
from quantbench.core.pipeline_base import MemoryOptions, ModelDefaults
from quantbench.core.fit import RunShape, WillNotFit, refuse_if_too_big
from quantbench.core.generation import CancelToken, GenerationResult, StepCallback, default_compute_dtype, dtype_name
from quantbench.core.images import save_png
from quantbench.core.pipelines import load_pipeline, model_defaults, supports_true_cfg, validate_request
from quantbench.core.sources import resolve_model_folder

from .history import HistoryStore


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: str
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    width: int = 64
    height: int = 64
    quantize: int | None = None
    text_encoder_quantize: int | None = None
    true_cfg: float = 1.0  # FLUX.1 [dev]: above 1, true CFG against the negative prompt (two passes a step)
    force: bool = False  # run even when the memory model says it will not fit

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "force"}


@dataclass
class RunOutcome:
    result: GenerationResult
    path: Path
    record: dict
    load_seconds: float = 0.0


@dataclass
class WorkbenchSession:
    """One loaded model at a time, reused while the model and its precisions stay the same."""

    images_dir: Path
    history: HistoryStore
    pipeline: object | None = None  # the model family's pipeline (core/pipelines.py)
    loaded_key: tuple | None = None
    # Resident by default: an interactive session re-encodes and re-denoises often. Lean frees the
    # text encoder after encoding, the transformer before decoding, and decodes in tiles.
    memory: MemoryOptions = field(default_factory=MemoryOptions)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def defaults(self, model: str) -> ModelDefaults:
        return model_defaults(resolve_model_folder(model, allow_download=False))

    def has_true_cfg(self, model: str) -> bool:
        """Whether the model has a true-CFG scale apart from its guidance (FLUX.1 [dev]; schnell is distilled)."""
        folder = resolve_model_folder(model, allow_download=False)
        return supports_true_cfg(folder) and not model_defaults(folder).distilled

    def check(self, request: GenerationRequest) -> None:
        """Refuse a bad request before any loading (raises QuantbenchError with one line)."""
        folder = resolve_model_folder(request.model, allow_download=False)
        defaults = model_defaults(folder)
        validate_request(folder, defaults, request.negative_prompt, request.guidance, request.width, request.height,
                         request.steps or defaults.steps, true_cfg=request.true_cfg)
        if self._key(request) != self.loaded_key:
            shape = RunShape(request.quantize, request.text_encoder_quantize, request.width, request.height,
                             self.memory.evict_text_encoder, self.memory.vae_tile, dtype_name(default_compute_dtype()))
            try:
                refuse_if_too_big(request.model, folder, shape, force=request.force)
            except WillNotFit as exc:
                raise WillNotFit(str(exc).replace("pass --force", "use 'Generate anyway' (ctrl+p)")) from None

    def load(self, request: GenerationRequest) -> float:
        key = self._key(request)
        if key == self.loaded_key and self.pipeline is not None:
            return 0.0
        started = time.perf_counter()
        self.pipeline = None  # let the previous model go before loading the next
        self.pipeline = load_pipeline(request.model, quantize=request.quantize,
                                           text_encoder_quantize=request.text_encoder_quantize,
                                           allow_download=False, memory=self.memory)
        self.loaded_key = key
        return time.perf_counter() - started

    def run(self, request: GenerationRequest, on_step: StepCallback, cancel: CancelToken,
            on_loading: Callable[[], None] | None = None) -> RunOutcome:
        with self._lock:
            self.check(request)
            if on_loading is not None and self._key(request) != self.loaded_key:
                on_loading()
            load_seconds = self.load(request)
            extra = {"true_cfg": request.true_cfg} if request.true_cfg != 1.0 else {}
            result = self.pipeline.generate(request.prompt, request.negative_prompt, request.steps, request.guidance,
                                            request.seed, request.width, request.height, callback=on_step,
                                            cancel=cancel, **extra)
            return self._save(request, result, load_seconds)

    def _key(self, request: GenerationRequest) -> tuple:
        return (request.model, request.quantize, request.text_encoder_quantize, self.memory)

    def set_lean(self, lean: bool) -> None:
        """Takes effect at the next run (the model reloads with the new options)."""
        self.memory = MemoryOptions.lean() if lean else MemoryOptions()

    @property
    def lean(self) -> bool:
        return self.memory.evict_text_encoder

    def _save(self, request: GenerationRequest, result: GenerationResult, load_seconds: float) -> RunOutcome:
        self.images_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.images_dir / f"{stamp}-seed{result.seed}-{_precision(request.quantize)}.png"
        counter = 1
        while path.exists():
            path = self.images_dir / f"{stamp}-seed{result.seed}-{_precision(request.quantize)}-{counter}.png"
            counter += 1
        info = self.pipeline.info
        record = {
            "time": time.time(), "model": request.model, **result.settings(),
            "quantize": request.quantize, "text_encoder_quantize": request.text_encoder_quantize,
            "true_cfg": request.true_cfg if request.true_cfg != 1.0 else None, "dtype": info.dtype,
            "step_seconds": [round(s, 4) for s in result.step_seconds],
            "total_seconds": round(result.total_seconds, 3), "load_seconds": round(load_seconds, 3),
            "peak_memory": result.peak_memory, "peak_rss": result.peak_rss, "image": str(path),
            "quantbench_version": __version__,
        }
        save_png(result.image, path, {k: v for k, v in record.items() if v is not None})
        self.history.append(record)
        return RunOutcome(result, path, record, load_seconds)


def _precision(bits: int | None) -> str:
    return "bf16" if bits is None else f"q{bits}"
