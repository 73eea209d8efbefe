"""Quantized transformers made in memory from one loaded full-precision transformer, so that a compare
reads the weights from disk once for all its precisions."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Mapping

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..quant import QuantSpec, cast_full_precision, evaluate_in_units, model_nbytes, quantize_model, use_dense_matmul
from .structure import CHECKPOINT_DTYPES, loaded_dtypes


class Requantizer:
    """Quantized transformers made in memory from one loaded full-precision transformer.

    build() repeats what loading from disk does after reading: parameters in the checkpoint's dtype,
    quantize_model, cast_full_precision, the dense matmul on the CPU, one layer at a time; only the
    source is the loaded full-precision copy instead of the files (exact when the compute dtype holds
    the checkpoint's values, as float32 on the CPU or bf16 compute of a bf16 checkpoint do)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.reference = pipeline.transformer
        self.params = tree_flatten(self.reference.parameters())
        self.reference_bytes = sum(a.nbytes for _, a in self.params)
        self.source = {k: CHECKPOINT_DTYPES[v] for k, v in loaded_dtypes(pipeline).items() if v in CHECKPOINT_DTYPES}
        self.extra = 0

    def build(self, spec: QuantSpec | Mapping[str, QuantSpec], calibration=None):
        """(transformer, QuantizationReport) for `spec` (one spec, or {layer: spec}); sets `extra`. A method
        that calibrates (gptq, awq) reads the weights again from the checkpoint, block by block. The
        calibration options' cancel token stops it between layers (Cancelled)."""
        from ..quant.calibration import calibrate, needs_calibration
        if needs_calibration(spec):
            result = calibrate(self.pipeline, spec, calibration, keep_transformer=True)
            self.extra = self.reference_bytes  # none of the reference is shared
            return result.transformer, result.report
        active_before = mx.get_active_memory()
        model = type(self.reference)(self.reference.config)  # lazy random init, replaced before anything runs
        model.update(tree_unflatten([(k, v.astype(self.source.get(k, v.dtype))) for k, v in self.params]))
        report = quantize_model(model, spec, self.pipeline.transformer_policy, "transformer")
        cast_full_precision(model, self.pipeline.dtype)
        if self.pipeline.info.quantized_matmul == "dense":
            use_dense_matmul(model)
        evaluate_in_units(model, calibration.cancel if calibration is not None else None)
        report.nbytes = model_nbytes(model)
        # What the new model shares with the reference = its bytes - the memory it newly took; the rest of
        # the reference is held only for the next precision (a load from disk would not hold it).
        shared = max(0, report.nbytes - (mx.get_active_memory() - active_before))
        self.extra = max(0, self.reference_bytes - shared)
        return model, report

    @contextmanager
    def using(self, transformer):
        self.pipeline.transformer = transformer
        try:
            yield
        finally:
            self.pipeline.transformer = self.reference
