"""Benchmarks in the layout of the on-the-fly quantization seed: memory and time per precision.

Every figure is measured in this process with MLX's own counters: transformer bytes after
quantization, the peak while loading and quantizing, the peak while generating (per phase, with and
without the lean-memory measures), seconds per step, and the CPU matmul throughput against NumPy.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from .builtin import EXAMPLE_PROMPT
from .catalog import precision_label
from .pipeline_base import MemoryOptions
from .pipelines import encoded_prompts, load_pipeline, model_defaults, validate_request
from .quant import UNQUANTIZED, QuantSpec, model_nbytes

# Not "bf16": without quantization the weights are held and computed in the compute dtype (float32 on the CPU).
BENCH_PROMPT = EXAMPLE_PROMPT  # every run's (the fit check counts it)


@dataclass
class BenchRow:
    precision: str
    memory: str  # "resident" (everything stays loaded) or "lean" (MemoryOptions.lean)
    transformer_bytes: int
    transformer_params: int
    load_peak: int
    generation_peak: int
    phase_peaks: dict[str, int]
    seconds_per_step: float
    total_seconds: float
    step_seconds: list[float] = field(default_factory=list)

    @property
    def largest_phase(self) -> int:
        return max(self.phase_peaks.values())

    @property
    def bf16_ratio(self) -> float:
        """Transformer bytes over the same weights in bfloat16 (the seed's -47% / -72% figures)."""
        return self.transformer_bytes / (2 * self.transformer_params)

    def to_dict(self) -> dict:
        return {**asdict(self), "largest_phase": self.largest_phase, "bf16_ratio": self.bf16_ratio}


def bench_prompts(folder: Path, size: int, steps: int) -> tuple[str, ...]:
    """What each run encodes (BENCH_PROMPT at the model's own guidance, and the family's negative stand-in where that
    runs true CFG), the request checked as the run checks it: the fit check predicts the batch the runs make."""
    defaults = model_defaults(folder)
    guidance = validate_request(folder, defaults, None, None, size, size, steps)
    return encoded_prompts(folder, defaults, BENCH_PROMPT, None, guidance)


def run_precision(folder: Path, bits: QuantSpec | int | None, size: int, steps: int, lean: bool, seed: int = 0) -> BenchRow:
    _release()
    mx.reset_peak_memory()
    memory = MemoryOptions.lean() if lean else MemoryOptions()
    model = load_pipeline(folder, quantize=bits, memory=memory)
    model.ensure_transformer()
    load_peak = mx.get_peak_memory()
    transformer_bytes = model_nbytes(model.transformer)
    transformer_params = sum(model.info.quantization[0].params.values())
    result = model.generate(BENCH_PROMPT, steps=steps,
                            width=size, height=size, seed=seed, preview=False)
    del model
    _release()
    steady = result.step_seconds[1:] or result.step_seconds  # the first step includes one-off set-up
    return BenchRow(UNQUANTIZED if bits is None else precision_label(bits), "lean" if lean else "resident", transformer_bytes,
                    transformer_params, load_peak, result.peak_memory, result.phase_peaks, float(np.mean(steady)),
                    result.total_seconds, result.step_seconds)


def matmul_throughput(n: int = 1024, repeats: int = 5, rounds: int = 6) -> dict:
    """float32 n x n matmul GFLOP/s: MLX (its CPU BLAS, or the GPU) against NumPy on the same machine.

    The two are timed in alternating rounds and each keeps its best round: a shared machine's speed
    drifts by a third within seconds, and timing one library after the other would measure the drift.
    Each has its own BLAS thread pool, whose threads keep spinning briefly after a call: a pause before
    each round keeps one library's idle threads from slowing the other's.
    """
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = mx.array(a)
    a @ a
    mx.eval(b @ b)
    flops = 2 * n**3 * repeats
    best = {"numpy": 0.0, "mlx": 0.0}
    for _ in range(rounds):
        for name, multiply in (("numpy", lambda: a @ a), ("mlx", lambda: mx.eval(b @ b))):
            time.sleep(0.3)  # the other library's BLAS threads spin for a while after their last call
            started = time.perf_counter()
            for _ in range(repeats):
                multiply()
            best[name] = max(best[name], flops / (time.perf_counter() - started) / 1e9)
    return {"size": n, "mlx_gflops": best["mlx"], "numpy_gflops": best["numpy"], "ratio": best["mlx"] / best["numpy"]}


def _release() -> None:
    gc.collect()
    mx.clear_cache()
