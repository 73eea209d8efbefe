"""Recommendations against the RAM tiers of the quantization-cliff article and the benchmark's minimums."""

import math

import pytest

from quantbench.core.catalog import ENTRIES, get_entry
from quantbench.core.errors import InvalidRequest
from quantbench.core.hardware import HardwareInfo
from quantbench.core.memory_model import GiB, Plan
from quantbench.core.recommend import (budget_for, budget_from_gb, budget_from_hardware, expected_quality,
                                       minimum_ram_gb, recommend)

# seeds/article-quantization-cliff.txt, "What to Run on Your Hardware" ("Dev" there is FLUX.1 [dev]):
# model -> best precision that fits comfortably, or None where it does not fit at all.
ARTICLE_TIERS = {
    16: {"klein-4b": "bf16", "flux1-dev": "q4", "qwen-image": None},  # Qwen won't load
    24: {"klein-4b": "bf16", "flux1-dev": "q8", "qwen-image": "q4"},  # Qwen q4 fits, with artifacts
    36: {"flux1-dev": "q8", "qwen-image": "q6"},  # Dev q8 comfortably; Qwen usable at q6
    48: {"flux1-dev": "bf16", "qwen-image": "q8"},  # Dev at full precision; Qwen q8, close other apps
}
# seeds/benchmark-onthefly-quantization.md, "Minimum RAM Requirements" (bf16, qint8, int4).
BENCHMARK_MINIMUM = {"klein-4b": (24, 16, 16), "klein-9b": (32, 24, 16), "flux2-dev": (96, 96, 32)}


@pytest.mark.parametrize("ram", sorted(ARTICLE_TIERS))
def test_advice_agrees_with_the_article_tiers(ram):
    rec = recommend(ram)
    for model, expected in ARTICLE_TIERS[ram].items():
        advice = rec.get(model)
        if expected is None:
            assert advice.status == "too big", (ram, model, advice.precision)
        else:
            assert (advice.status, advice.precision) == ("fits", expected), (ram, model)


def test_the_cliff_is_flagged_where_the_article_sees_it():
    at_24 = recommend(24).get("qwen-image")
    assert at_24.quality.tier == 0 and any("quality cliff" in w for w in at_24.warnings)
    at_16 = recommend(16).get("flux1-dev")
    assert any("quality cliff" in w for w in at_16.warnings)
    assert recommend(36).get("qwen-image").quality.label == "good"


def test_qwen_at_48_gb_fits_because_loading_is_streamed():
    """Loading everything before quantizing would pass the comfortable budget; streamed loading does not."""
    advice = recommend(48).get("qwen-image")
    budget = recommend(48).budget
    assert advice.precision == "q8"
    assert advice.prediction.load_peaks["lazy"] > budget.comfortable >= advice.prediction.load_peak
    assert not any("while it loads" in w for w in advice.warnings)


def test_a_small_model_at_full_precision_beats_a_large_one_at_4_bits():
    rec = recommend(16)
    # Qwen-Image 2.1 (7B) fits a 16 GB Mac at 8 bits (its text encoder at 8 bits too): near-lossless and largest
    assert rec.best_overall == rec.best_runnable == "qwen-image-2.1"
    # without it, Z-Image-Turbo (6B) at 8 bits, near-lossless, ranks with Klein 4B at full precision and wins by size
    earlier = recommend(16, entries=tuple(e for e in ENTRIES if e.family != "qwen-image-2.1"))
    assert earlier.best_overall == "z-image-turbo" and earlier.best_runnable == "z-image-turbo"
    assert rec.get("z-image-turbo").precision == "q8" and rec.get("klein-4b").precision == "bf16"
    assert expected_quality(get_entry("flux1-dev"), 4).tier < expected_quality(get_entry("klein-4b"), None).tier
    assert expected_quality(get_entry("klein-4b"), 4).tier > expected_quality(get_entry("qwen-image"), 4).tier
    # the cliff is between 6 and 4 bits on a large model, not a gentle slope
    qwen = [expected_quality(get_entry("qwen-image"), b).tier for b in (None, 8, 6, 5, 4, 3)]
    assert qwen == [3, 3, 2, 1, 0, 0]


@pytest.mark.parametrize("model", sorted(BENCHMARK_MINIMUM))
def test_minimum_ram_agrees_with_the_benchmark_table(model):
    entry = get_entry(model)
    for bits, expected in zip((None, 8, 4), BENCHMARK_MINIMUM[model]):
        # the benchmark's setup: everything quantized, 8-bit text encoder loaded alone, whole decode
        plan = Plan(transformer_bits=bits, text_encoder_bits=8, policy="all", text_encoder="staged", load="streamed")
        if (model, bits) == ("flux2-dev", 8):
            # "*Dev qint8 peaks at 68 GB during quantization (loads full bf16 then quantizes). With
            # pre-quantized weights, peak is lower."
            assert minimum_ram_gb(entry, Plan(**{**plan.__dict__, "load": "full"})) == expected
            assert minimum_ram_gb(entry, Plan(**{**plan.__dict__, "load": "prequantized"})) < expected
            continue
        assert minimum_ram_gb(entry, plan) == expected, bits


def test_unshipped_models_are_listed_not_advised():
    import dataclasses

    from quantbench.core.catalog import ENTRIES

    unshipped = tuple(dataclasses.replace(e, shipped=False) if e.id == "demo" else e for e in ENTRIES)
    advice = recommend(64, entries=unshipped).get("demo")
    assert advice.status == "not shipped" and advice.plan is None


def test_the_shipped_builtin_models_fit_anywhere_at_their_native_size():
    for model in ("demo", "demo-turbo"):
        advice = recommend(8).get(model)
        if advice.entry.shipped:
            assert advice.status == "fits" and advice.precision == "bf16"
            assert advice.prediction.generation_peak < 200 * 2 ** 20


def test_every_fitting_advice_is_within_budget_and_more_ram_never_gives_worse():
    order = ["q4", "q6", "q8", "bf16"]
    previous = {}
    for ram in (8, 16, 18, 24, 32, 36, 48, 64, 96, 128):
        rec = recommend(ram)
        for advice in rec.advice:
            if advice.status == "fits":
                assert advice.prediction.generation_peak <= rec.budget.comfortable
                rank = order.index(advice.precision)
                assert rank >= previous.get(advice.entry.id, -1), (ram, advice.entry.id)
                previous[advice.entry.id] = rank


def test_models_that_do_not_fit_say_what_machine_they_need():
    advice = recommend(16).get("flux2-dev")
    assert advice.status == "too big" and advice.needs_gb == 36
    assert "more than the 10.7 GB usable here" in advice.warnings[0]
    assert recommend(36).get("flux2-dev").status == "fits"


def test_a_tight_fit_is_reported_with_its_warning():
    # klein-9b bf16 at 1024^2 needs 18.5 GB at least: over 60% of 28 GB (16.8), within its 2/3 (18.7).
    rec = recommend(28, "klein-9b")
    advice = rec.advice[0]
    assert advice.status == "fits" and advice.precision == "q8"
    assert advice.stretch is not None and advice.stretch[0].transformer_bits is None
    assert any("also fits with other apps closed" in w for w in advice.warnings)


@pytest.mark.parametrize("bad", [0, -4, 0.5, 100000, math.nan, math.inf])
def test_absurd_ram_is_a_one_line_error(bad):
    with pytest.raises(InvalidRequest) as err:
        budget_from_gb(bad)
    assert "\n" not in str(err.value) and "--ram" in str(err.value)


def test_unknown_model_is_refused():
    with pytest.raises(InvalidRequest, match="unknown model 'sd15'"):
        recommend(16, "sd15")


def test_budget_rules():
    b = budget_for(16 * GiB)
    assert b.comfortable == int(0.6 * 16 * GiB)
    assert b.tight == pytest.approx(16 * GiB * 2 / 3, abs=1)
    assert budget_for(64 * GiB).tight == 48 * GiB
    # a detected Metal working set below 60% caps the comfortable budget
    assert budget_for(16 * GiB, working_set=8 * GiB).comfortable == 8 * GiB


def test_budget_from_detected_hardware():
    hw = HardwareInfo("Darwin", "15.0", "arm64", "Apple M3", 8, 24 * GiB, 10 * GiB, 0, 0, "normal", None,
                      None, None, "0.30", "metal", "Apple M3", int(16 * GiB), None)
    b = budget_from_hardware(hw)
    assert b.source == "detected" and b.tight == 16 * GiB and b.ram == 24 * GiB
    unknown = HardwareInfo("Linux", "6", "x86_64", None, None, None, None, None, None, None, None, None, None,
                           None, "cpu", None, None, None)
    with pytest.raises(InvalidRequest, match="--ram"):
        budget_from_hardware(unknown)
    linux = HardwareInfo("Linux", "6", "x86_64", "EPYC", 2, 64 * GiB, 60 * GiB, 0, 0, None, 0.0, None, None,
                         "0.30", "cpu", None, None, None)
    assert budget_from_hardware(linux).tight == int(0.9 * 64 * GiB)  # no macOS working set on Linux
    cuda = HardwareInfo("Linux", "6", "x86_64", "EPYC", 16, 128 * GiB, 120 * GiB, 0, 0, None, 0.0, None, None,
                        "0.30", "cuda", "NVIDIA H100", None, None, gpu_memory=80 * GiB)
    assert budget_from_hardware(cuda).ram == 80 * GiB  # models run in the card's memory


def test_the_readmes_table_of_what_fits_on_which_mac_is_what_recommend_says(capsys):
    """README's "What fits on which Mac" was written once and drifted as the memory model learned (z-image at 8 GB
    read "-" where recommend picks q4, qwen-image-2.1 at 24 GB 14.3 GB where it predicts 11.0): it is checked here."""
    import json
    from pathlib import Path

    from quantbench.cli.main import main

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## What fits on which Mac", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    tiers = [int(cell.split()[0]) for cell in lines[0].strip("|").split("|")[1:]]
    written = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}
    said = {}
    for ram in tiers:
        assert main(["recommend", "--ram", str(ram), "--json"]) == 0
        for advice in json.loads(capsys.readouterr().out)["models"]:
            if advice["status"] == "too big":
                cell = "-"
            else:
                encoder = advice["plan"]["text_encoder"]
                cell = (f"{advice['precision']}{f' (TE {encoder})' if encoder != 'bf16' else ''}, "
                        f"{advice['peak_bytes'] / 2 ** 30:.1f}")
            said.setdefault(advice["model"], []).append(cell)
    assert written == {model: cells for model, cells in said.items() if model in written}
    assert set(said) - set(written) == {"demo", "demo-turbo"}  # the sentence above the table names demo
