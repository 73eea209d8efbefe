"""Defaults the memory model chooses for a run: the text encoder's precision and --low-memory's VAE tile."""

from dataclasses import replace

import pytest

from quantbench.core.fit import (MIN_AUTO_TILE, RunShape, _plan, catalog_entry_for, check_fit,
                                 default_text_encoder_bits, lean_vae_tile)
from quantbench.core.hardware import detect
from quantbench.core.memory_model import predict
from quantbench.core.random_model import write_random_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("klein") / "klein", "klein-4b", width_scale=0.25)


def test_text_encoder_full_precision_when_it_fits_comfortably_else_8_bits_where_that_lowers_the_peak(folder):
    shape = RunShape(4, None, 256, 256, True, None, "float32")
    roomy = replace(detect(), backend="cpu", os="Linux", total_ram=64 * 2**30)
    assert default_text_encoder_bits(str(folder), folder, shape, hardware=roomy) is None
    full = check_fit(str(folder), folder, shape, roomy)
    eight = check_fit(str(folder), folder, replace(shape, text_encoder_bits=8), roomy)
    assert full.phase == "encode" and eight.peak < full.peak  # the float32 encoder sets a 4-bit run's peak
    # A machine whose comfortable budget (60%) is below the full-precision run's peak gets the 8-bit encoder.
    tight = replace(roomy, total_ram=int(full.peak / 0.6) - 2**20)
    assert default_text_encoder_bits(str(folder), folder, shape, hardware=tight) == 8



def test_lean_vae_tile_follows_the_image_and_never_sets_the_peak(folder):
    def phases(shape):
        return predict(catalog_entry_for(str(folder), folder), _plan(folder, shape, "cpu")).phases

    for bits in (None, 4):
        for size in (256, 512, 1024):
            shape = RunShape(bits, None, size, size, True, None, "float32")
            tile = lean_vae_tile(str(folder), folder, shape, hardware=replace(detect(), backend="cpu"))
            whole = phases(shape)
            others = max(v for k, v in whole.items() if k != "decode")
            if tile is None:
                assert whole["decode"] <= others  # the whole image's decode was not the peak
                continue
            assert tile % 64 == 0 and MIN_AUTO_TILE <= tile < size
            assert whole["decode"] > others
            assert phases(replace(shape, vae_tile=tile))["decode"] <= others or tile == MIN_AUTO_TILE
            if tile + 64 < size:  # the largest such tile: one step bigger sets the peak
                assert phases(replace(shape, vae_tile=tile + 64))["decode"] > others


def test_a_run_on_a_tight_machine_quantizes_its_text_encoder_and_records_it(tmp_path, monkeypatch):
    from quantbench.core import hardware
    from quantbench.core.generate import generate_image
    from quantbench.core.generation import GenerationSettings

    real = hardware.detect()
    # Tight: below the run's predicted peak over the comfortable share (a 512 px decode is about 0.3 GB).
    monkeypatch.setattr(hardware, "detect", lambda: replace(real, total_ram=int(0.3 * 2**30), backend="cpu",
                                                            gpu_memory=None))
    settings = GenerationSettings(model="demo-turbo", prompt="a square", steps=1, width=512, height=512)
    outcome = generate_image(settings, out=tmp_path / "tight.png", force=True)
    assert str(outcome.record["text_encoder_quantize"]) == "8"
    reports = {report.component: report for report in outcome.pipeline.info.quantization}
    assert reports["text_encoder"].layers and not reports["transformer"].layers
