"""Streamed loading: the load peak stays near the final quantized size, not the full-precision model."""

import sys

import pytest

from quantbench.core.random_model import write_random_model

sys.path.insert(0, "benchmarks")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # ~80 MB of bf16 transformer weights in 25 blocks: one layer is small against the whole.
    return write_random_model(tmp_path_factory.mktemp("rnd") / "k4", "klein-4b", 0.12) / "transformer"


@pytest.mark.parametrize("bits", ["4", "8"])
def test_streamed_peak_is_close_to_the_final_size_and_far_below_loading_all_at_once(checkpoint, bits):
    from streamed_loading import measure

    streamed, at_once = measure(checkpoint, bits, True), measure(checkpoint, bits, False)
    assert streamed["final_bytes"] == at_once["final_bytes"]
    assert streamed["ratio"] < 1.15, streamed
    assert at_once["ratio"] > streamed["ratio"] + 0.3, (at_once, streamed)
