"""A plan an `auto:` search found is kept, and the same request on the same model files reads it back instead of
searching again (minutes even on the built-in demo model); a changed model file, budget or calibration prompt file
is a new request; a kept plan that is unreadable or no longer fits is searched again; a cache that cannot be written
stops nothing."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from quantbench.cli.main import main
from quantbench.core.generation import parse_dtype
from quantbench.core.lab.budgets import parse_budget
from quantbench.core.lab.plan_cache import cache_folder, keep_plan, kept_plan, plan_key
from quantbench.core.lab.plans import QuantPlan
from quantbench.core.quant import QuantSpec
from quantbench.core.quant.calibration.settings import CalibrationOptions
from quantbench.core.random_model import write_random_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("rnd") / "tiny", "tiny")


def _generate(model, out, quantize="auto:5"):
    return main(["generate", "--model", str(model), "--prompt", "a red star", "--width", "48", "--height", "32",
                 "--steps", "2", "--seed", "7", "--quantize", quantize, "--out", str(out), "--json"])


def _run(model, out, capsys):
    assert _generate(model, out) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_a_second_run_reads_the_plan_the_first_searched(model, tmp_path, capsys):
    first, searched = _run(model, tmp_path / "first.png", capsys)
    assert "[1/" in searched and "kept in" not in searched
    kept = list(cache_folder().glob("*.json"))
    assert len(kept) == 1

    second, reread = _run(model, tmp_path / "second.png", capsys)
    assert "[1/" not in reread and "loading" not in reread.split("kept in")[0]
    assert f"kept in {kept[0]}" in reread and "delete it to search again" in reread
    assert second["quantize"] == first["quantize"]
    assert second["load"]["quantization"] == first["load"]["quantization"]
    pixels = [np.asarray(Image.open(tmp_path / name)) for name in ("first.png", "second.png")]
    assert np.array_equal(*pixels)


def _plan(layers=None) -> QuantPlan:
    return QuantPlan(layers=layers or {"transformer_blocks.0.ff.linear_in": QuantSpec(4)}, model="tiny",
                     average_bits=4.0, transformer_bytes=1, made_by="auto:4")


def test_a_changed_model_file_budget_or_prompt_file_is_another_request(model, tmp_path):
    budget = parse_budget("auto:4")
    key = plan_key(model, budget)
    assert plan_key(model, budget) == key
    assert plan_key(model, budget, dtype=parse_dtype("auto")) == key  # save asks for none, generate for auto
    assert plan_key(model, parse_budget("auto:4:hqq")) != key
    assert plan_key(model, budget, text_encoder_layers=(1,)) != key
    assert plan_key(model, budget, probe={"size": 48, "steps": 2}) != plan_key(model, budget, probe={"size": 48,
                                                                                                   "steps": 3})
    lora = tmp_path / "style.safetensors"  # a model searched with a LoRA fused in: its own request, file as it is
    lora.write_bytes(b"1")
    with_lora = plan_key(model, budget, loras=[str(lora)])
    assert with_lora != key and plan_key(model, budget, loras=()) == key
    assert plan_key(model, budget, loras=[f"{lora}:0.5"]) != with_lora
    lora.write_bytes(b"12")
    assert plan_key(model, budget, loras=[str(lora)]) != with_lora
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red star\n")
    with_prompts = plan_key(model, budget, calibration=CalibrationOptions(prompts_file=prompts))
    assert with_prompts != key
    prompts.write_text("# the prompts I calibrate on\na red star\n\n")  # the same prompts: the same request
    assert plan_key(model, budget, calibration=CalibrationOptions(prompts_file=prompts)) == with_prompts
    prompts.write_text("a blue star\n")
    assert plan_key(model, budget, calibration=CalibrationOptions(prompts_file=prompts)) != with_prompts
    single = tmp_path / "flux1-dev.safetensors"  # a single-file checkpoint is its own one file
    single.write_bytes(b"1")
    first = plan_key(single, budget)
    single.write_bytes(b"12")
    assert plan_key(single, budget) != first
    config = next(model.rglob("config.json"))
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert plan_key(model, budget) != key


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 1, "layers": {"no.such.layer": 4}}), ""])
def test_a_kept_plan_that_is_unreadable_or_does_not_fit_is_not_read(model, content):
    key = plan_key(model, parse_budget("auto:4"))
    layer = "transformer_blocks.0.ff.linear_in"
    assert keep_plan(_plan({layer: QuantSpec(4)}), key) is not None
    plan, path = kept_plan(model, key)
    assert plan.layers == {layer: QuantSpec(4)}
    path.write_text(content)
    assert kept_plan(model, key) is None


def test_a_cache_that_cannot_be_written_keeps_nothing_and_says_so(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("QUANTBENCH_PLAN_CACHE", str(blocker / "plans"))
    said = []
    assert keep_plan(_plan(), "k" * 32, note=said.append) is None
    assert len(said) == 1 and "could not be kept" in said[0]
    monkeypatch.setenv("QUANTBENCH_PLAN_CACHE", "off")
    assert cache_folder() is None and keep_plan(_plan(), "k" * 32) is None


def test_only_the_newest_plans_are_kept(monkeypatch):
    monkeypatch.setattr("quantbench.core.lab.plan_cache.MAX_KEPT", 3)
    for number in range(5):
        path = keep_plan(_plan(), f"{number:032d}")
        os.utime(path, ns=(number * 10**9, number * 10**9))
    assert sorted(p.stem[-1] for p in cache_folder().glob("*.json")) == ["2", "3", "4"]


def test_the_ranks_of_a_job_search_together_rather_than_read_a_kept_plan(monkeypatch):
    """Were one rank to find a plan kept on its host while another did not, the other would wait for it forever."""
    from quantbench.core.distributed import World
    assert cache_folder() is not None
    monkeypatch.setattr("quantbench.core.lab.plan_cache.known_world", lambda: World(rank=1, size=2))
    assert cache_folder() is None and keep_plan(_plan(), "k" * 32) is None


def test_compare_keeps_its_searched_plan_too(model, capsys):
    """compare probes at its own size and steps: its plans are kept under their own key, and read back by the same
    compare."""
    argv = ["compare", "--model", str(model), "--prompt", "a red star", "--width", "48", "--height", "32",
            "--steps", "2", "--precisions", "bf16,auto:5"]

    def run() -> tuple[str, str]:
        assert main(argv) == 0
        err = capsys.readouterr().err
        return err, next(line for line in err.splitlines() if line.startswith("auto:5: ") and "PSNR" in line)

    (searched, first_row), (reread, second_row) = run(), run()
    assert "[1/" in searched and "kept in" not in searched
    assert "[1/" not in reread and "kept in" in reread
    assert second_row.split("PSNR")[1] == first_row.split("PSNR")[1]
    assert len(list(cache_folder().glob("*.json"))) == 1
