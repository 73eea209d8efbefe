"""The memory model against the engine on a Klein-4B-structured random model (width 0.25: 25 blocks, 27
encoder layers, the full VAE structure), at 4 bits and unquantized, in the lean mode: within 10%."""

import gc
from pathlib import Path

import mlx.core as mx
import pytest

from quantbench.core.fit import RunShape, _plan, catalog_entry_for
from quantbench.core.memory_model import predict
from quantbench.core.pipeline_base import MemoryOptions
from quantbench.core.pipelines import load_pipeline
from quantbench.core.random_model import write_random_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("scale") / "klein", "klein-4b", width_scale=0.25)


@pytest.mark.parametrize("bits", [4, None])
def test_predicted_peak_is_within_10_percent_of_mlx_peak(folder, bits):
    shape = RunShape(bits, 8, 256, 256, True, None, "float32", release_transformer_for_decode=True)
    prediction = predict(catalog_entry_for(str(folder), folder), _plan(folder, shape, "cpu"))
    gc.collect()
    held = mx.get_active_memory()  # what earlier tests in this process hold: MLX's peak counts it too
    model = load_pipeline(folder, quantize=bits, text_encoder_quantize=8, memory=MemoryOptions.lean(None))
    result = model.generate("a fox", steps=1, width=256, height=256, preview=False)
    assert abs((result.peak_memory - held) / prediction.generation_peak - 1) <= 0.10, (
        held, result.phase_peaks, prediction.phases)
    # The decode runs without the transformer (--low-memory): the prediction must not count it there.
    assert prediction.phases["decode"] < prediction.phases["denoise"] or bits is not None
