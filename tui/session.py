"""The workbench's side of the engine: keep a model loaded, run a request, save and record the result.

Plain Python with no Textual import, so it can be tested and reused on its own; the app calls it
from a thread worker and turns its callbacks into messages.
"""

from __future__ import annotations

import shlex
import threading
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from quantbench.core.atomic import OutputError, check_folder_writable
from quantbench.core.disk_space import NoRoom
from quantbench.core.fit import WillNotFit
from quantbench.core.generate import ModelSlot, Outcome, PreparedRun, generate_image, plan_generation, prepare_run
from quantbench.core.generation import CancelToken, GenerationSettings, StepCallback
from quantbench.core.pipeline_base import MemoryOptions, ModelDefaults
from quantbench.core.pipelines import model_defaults, supports_true_cfg
from quantbench.core.quant.calibration import CalibrationOptions, CalibrationProgress
from quantbench.core.sources import NotDownloaded, resolve_model_folder

from .history import HistoryStore


@dataclass
class RunOutcome(Outcome):
    """The engine's outcome (result, path, record, load_seconds, warnings) and what the monitor compares it with."""

    predicted_peak: int | None = None  # the memory model's MLX peak for the generation (None: a model it cannot read)
    kept_dequantized_bytes: int = 0  # dense copies of quantized layers the run kept (GenerationRequest.keep_dequantized)


@dataclass(frozen=True)
class GenerationRequest(GenerationSettings):
    force: bool = False  # run even when the memory model says it will not fit
    # Memory for speed on the CPU: bytes of the transformer's quantized layers also kept dequantized (math.inf:
    # all; 0: off), the CLI's --keep-dequantized. A memory option of this run, beside the session's lean/resident.
    keep_dequantized: float = 0.0
    # A transformer precision that calibrates (gptq, awq) calibrates on these prompts, read from `calibration_file`
    # (the CLI's --calibration-prompts); None: the model's own.
    calibration_prompts: tuple[str, ...] | None = None
    calibration_file: Path | None = None

    def calibration(self, **hooks) -> CalibrationOptions:
        """The run's CalibrationOptions: its prompts, and `hooks` (progress, cancel, warn)."""
        return CalibrationOptions(prompts_file=self.calibration_file, prompts=self.calibration_prompts, **hooks)


@dataclass
class WorkbenchSession:
    """One loaded model at a time, reused while the model and its precisions stay the same; each run goes
    through the engine's one generation path (core/generate.py), as `quantbench generate` does."""

    images_dir: Path
    history: HistoryStore
    # Resident by default: an interactive session re-encodes and re-denoises often. Lean frees the
    # text encoder after encoding, the transformer before decoding, and decodes in tiles.
    memory: MemoryOptions = field(default_factory=MemoryOptions)
    slot: ModelSlot = field(default_factory=ModelSlot)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pipeline(self):
        return self.slot.pipeline

    @pipeline.setter
    def pipeline(self, pipeline) -> None:
        self.slot.pipeline = pipeline

    @property
    def loaded_key(self) -> tuple | None:
        return self.slot.key

    @loaded_key.setter
    def loaded_key(self, key: tuple | None) -> None:
        self.slot.key = key

    def defaults(self, model: str) -> ModelDefaults:
        try:
            folder = resolve_model_folder(model, allow_download=False)
        except NotDownloaded as exc:  # the workbench never downloads: say how to get the model
            raise NotDownloaded(f"{exc}; the workbench does not download: fetch it once with `quantbench download "
                                f"--model {shlex.quote(str(model))}`") from None
        return model_defaults(folder)

    def has_true_cfg(self, model: str) -> bool:
        """Whether the model has a true-CFG scale apart from its guidance (FLUX.1 [dev]; schnell is distilled)."""
        folder = resolve_model_folder(model, allow_download=False)
        return supports_true_cfg(folder) and not model_defaults(folder).distilled

    def check(self, request: GenerationRequest, calibration: CalibrationOptions | None = None) -> PreparedRun:
        """Refuse a bad request before any loading (raises QuantbenchError with one line); the checked plan
        and memory options, as the engine will run them, and the memory model's prediction (None for a
        model it cannot read). `calibration`: the run's options (default: the request's prompts alone)."""
        plan = plan_generation(request, calibration=calibration or request.calibration())
        memory = replace(self.memory, keep_dequantized=request.keep_dequantized)
        try:
            return prepare_run(plan, memory, self.slot, force=request.force)
        except WillNotFit as exc:
            raise WillNotFit(str(exc).replace("pass --force", "use 'Generate anyway' (ctrl+p)")) from None

    def run(self, request: GenerationRequest, on_step: StepCallback, cancel: CancelToken,
            on_loading: Callable[[], None] | None = None,
            on_calibration: Callable[[CalibrationProgress], None] | None = None,
            on_warning: Callable[[str], None] | None = None,
            on_component_loading: Callable[[str, bool], None] | None = None) -> RunOutcome:
        """`on_calibration` hears a calibrating method's progress (block i of N); `cancel` stops it too, and a
        cancelled calibration leaves no transformer behind. `on_warning` hears what is known before loading (a
        prompt longer than the text encoder reads); the outcome's warnings hold it too. `on_component_loading` hears a
        component loaded during the run itself begin and end (a lean run loads its text encoder and transformer
        again each time)."""
        with self._lock:
            calibration = request.calibration(progress=on_calibration, cancel=cancel, warn=on_warning)
            prepared = self.check(request, calibration)
            calibration = replace(calibration, warn=None)  # the prompts it cuts were told as the plan was made
            try:
                check_folder_writable(self.images_dir)
            except OutputError as exc:  # a read-only HOME: say where else the pictures can go
                raise OutputError(f"{exc}; set QUANTBENCH_DATA_DIR to a folder you can write in (pictures and "
                                  "history go there) and start the workbench again") from None
            if self.slot.pipeline is not None:  # a lean run reloads, and so recalibrates, its transformer each time
                self.slot.pipeline.calibration = calibration
            try:
                outcome = generate_image(prepared, images_dir=self.images_dir, slot=self.slot,
                                         history=self.history, force=True, on_step=on_step, on_loading=on_loading,
                                         cancel=cancel, calibration=calibration, warn=on_warning,
                                         on_component_loading=on_component_loading)
            except NoRoom as exc:  # a full disk: the workbench has no destination to choose, only its folder
                raise OutputError(exc.saying("set QUANTBENCH_DATA_DIR to a folder on another disk (pictures and "
                                             "history go there) and start the workbench again")) from None
            engine = {f.name: getattr(outcome, f.name) for f in fields(Outcome)}
            fit = outcome.predicted
            kept = outcome.pipeline.info.kept_dequantized_bytes if outcome.pipeline is not None else 0
            return RunOutcome(**engine, predicted_peak=fit.generation_peak if fit is not None else None,
                              kept_dequantized_bytes=kept)

    def set_lean(self, lean: bool) -> None:
        """Takes effect at the next run (the model reloads with the new options)."""
        self.memory = MemoryOptions.lean() if lean else MemoryOptions()

    @property
    def lean(self) -> bool:
        return self.memory.evict_text_encoder
