"""Without --text-encoder-quantize the text encoder's precision is the memory model's best for the run."""

from dataclasses import replace

from quantbench.core.fit import RunShape, check_fit, default_text_encoder_bits
from quantbench.core.hardware import detect
from quantbench.core.random_model import write_random_model


def test_full_precision_when_it_fits_comfortably_else_8_bits_where_that_lowers_the_peak(tmp_path):
    folder = write_random_model(tmp_path / "klein", "klein-4b", width_scale=0.25)
    shape = RunShape(4, None, 256, 256, True, None, "float32")
    roomy = replace(detect(), backend="cpu", os="Linux", total_ram=64 * 2**30)
    assert default_text_encoder_bits(str(folder), folder, shape, hardware=roomy) is None
    full = check_fit(str(folder), folder, shape, roomy)
    eight = check_fit(str(folder), folder, replace(shape, text_encoder_bits=8), roomy)
    assert full.phase == "encode" and eight.peak < full.peak  # the float32 encoder sets a 4-bit run's peak
    # A machine whose comfortable budget (60%) is below the full-precision run's peak gets the 8-bit encoder.
    tight = replace(roomy, total_ram=int(full.peak / 0.6) - 2**20)
    assert default_text_encoder_bits(str(folder), folder, shape, hardware=tight) == 8

