"""One generation path (issue 15, item 4): the CLI and the workbench check, load, generate, write and record
through core/generate.py, so they write the same PNG keys and the same picture, and history stays readable."""

import json

import numpy as np
import pytest
from PIL import Image

from quantbench.cli.main import main
from quantbench.core.errors import Cancelled
from quantbench.core.generate import ModelSlot, generate_image
from quantbench.core.generation import CancelToken, GenerationSettings
from quantbench.core.images import read_png_metadata
from quantbench.tui.history import HistoryStore
from quantbench.tui.session import GenerationRequest, WorkbenchSession

# A history line as the workbench wrote it before the one generation path (quantbench 0.x, this repo's history).
OLD_RECORD = {"time": 1760000000.0, "model": "demo", "prompt": "a red star", "negative_prompt": None, "seed": 3,
              "steps": 2, "guidance": 1.5, "width": 64, "height": 64, "quantize": 4, "text_encoder_quantize": None,
              "true_cfg": None, "dtype": "float32", "step_seconds": [0.01, 0.01], "total_seconds": 0.1,
              "load_seconds": 0.2, "peak_memory": 1000, "peak_rss": 2000, "image": "/x.png",
              "quantbench_version": "0.1.0"}


def test_the_cli_and_the_workbench_write_the_same_keys_and_the_same_picture(tmp_path):
    cli_png = tmp_path / "cli.png"
    assert main(["generate", "--model", "demo", "--prompt", "a red star", "--steps", "2", "--seed", "3",
                 "--quantize", "4", "--out", str(cli_png), "--quiet"]) == 0
    session = WorkbenchSession(images_dir=tmp_path / "images", history=HistoryStore(tmp_path / "history.jsonl"))
    outcome = session.run(GenerationRequest(model="demo", prompt="a red star", steps=2, seed=3, quantize=4),
                          on_step=lambda step: None, cancel=CancelToken())
    cli, workbench = read_png_metadata(cli_png), read_png_metadata(outcome.path)
    assert set(cli) == set(workbench) and "quantbench_version" in cli
    for key in ("model", "prompt", "seed", "steps", "guidance", "width", "height", "quantize", "dtype"):
        assert cli[key] == workbench[key], key
    assert np.array_equal(np.asarray(Image.open(cli_png)), np.asarray(Image.open(outcome.path)))
    history = HistoryStore(tmp_path / "history.jsonl").load()
    assert len(history) == 1 and set(OLD_RECORD) <= set(history[0])  # every key old readers look for
    assert {k for k, v in history[0].items() if v is not None} == set(workbench)  # the PNG is the record


def test_history_lines_old_and_new_give_the_same_settings(tmp_path):
    old = GenerationSettings.from_record(OLD_RECORD)
    assert old == GenerationSettings(model="demo", prompt="a red star", seed=3, steps=2, guidance=1.5, width=64,
                                     height=64, quantize=4, dtype="float32")
    settings = GenerationSettings(model="demo", prompt="a red star", seed=3, steps=2, quantize=4, dtype="float32")
    outcome = generate_image(settings, images_dir=tmp_path, history=HistoryStore(tmp_path / "h.jsonl"))
    line = json.loads((tmp_path / "h.jsonl").read_text())
    assert GenerationSettings.from_record(line) == old  # guidance (demo's 1.5), width and height resolved
    assert read_png_metadata(outcome.path)["prompt"] == "a red star"


def test_a_loaded_model_is_reused_and_a_cancelled_run_writes_nothing(tmp_path):
    slot, history = ModelSlot(), HistoryStore(tmp_path / "h.jsonl")
    settings = GenerationSettings(model="demo-turbo", prompt="a blue ring")
    first = generate_image(settings, images_dir=tmp_path / "images", slot=slot, history=history)
    second = generate_image(settings, images_dir=tmp_path / "images", slot=slot, history=history)
    assert first.load_seconds > 0 and second.load_seconds == 0 and second.pipeline is first.pipeline
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        generate_image(settings, images_dir=tmp_path / "images", slot=slot, history=history, cancel=cancel)
    assert len(list((tmp_path / "images").iterdir())) == 2 and len(history.load()) == 2


def test_plans_go_through_the_same_path(tmp_path):
    """A plan file (here: every layer at 4 bits but the first, at 8) is accepted as --quantize is."""
    from quantbench.core.builtin import builtin_model_path
    from quantbench.core.lab.layer_bytes import quantizable_layers
    from quantbench.core.lab.plans import QuantPlan
    from quantbench.core.lab.structure import transformer_structure

    layers = {path: 4 for path in quantizable_layers(transformer_structure(builtin_model_path("demo-turbo")))}
    layers[next(iter(layers))] = 8
    plan = tmp_path / "plan.json"
    QuantPlan(layers, "demo-turbo").save(plan)
    outcome = generate_image(GenerationSettings(model="demo-turbo", prompt="a blue ring", quantize=str(plan)),
                             images_dir=tmp_path / "images")
    assert outcome.record["quantize"] == f"mixed 4-8 ({plan})"
    assert read_png_metadata(outcome.path)["quantize"] == outcome.record["quantize"]
    assert outcome.pipeline.info.transformer_bits == "mixed"


def test_a_workbench_run_prepares_it_once_and_runs_what_it_checked(tmp_path, monkeypatch):
    """The workbench checks a request (fit, VAE tile, text-encoder default) and then runs exactly that: the memory
    model is asked once per run, and the run's summary compares with the prediction the check made."""
    import quantbench.core.generate as engine

    asked = []
    real_check_fit = engine.check_fit
    monkeypatch.setattr(engine, "check_fit", lambda *a, **k: asked.append(1) or real_check_fit(*a, **k))
    session = WorkbenchSession(images_dir=tmp_path / "images", history=HistoryStore(tmp_path / "history.jsonl"))
    outcome = session.run(GenerationRequest(model="demo-turbo", prompt="a blue ring", steps=2, quantize=4),
                          on_step=lambda step: None, cancel=CancelToken())
    assert len(asked) == 1
    assert outcome.predicted is not None and outcome.predicted_peak == outcome.predicted.generation_peak
    assert outcome.path.exists()


def test_a_history_a_full_disk_cannot_take_is_named_in_the_warning(tmp_path, monkeypatch):
    """A full disk's ENOSPC from the history's write names no file: the warning said 'the history could not record
    it (No space left on device)' and left the user to guess which file; it names history.jsonl, and the picture
    stays."""
    import errno
    import os

    history_file = tmp_path / "history.jsonl"
    real_write = os.write

    def full_disk(fd, data):
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(history_file):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    settings = GenerationSettings(model="demo-turbo", prompt="a blue ring", steps=2)
    outcome = generate_image(settings, images_dir=tmp_path / "images", history=HistoryStore(history_file))
    assert outcome.path.is_file()
    assert outcome.warnings == [f"{outcome.path} is saved, but the history {history_file} could not record it "
                                "(No space left on device)"]
    assert history_file.read_bytes() == b""  # the torn line taken back


def test_a_transformer_loaded_after_encoding_counts_in_the_load_seconds(tmp_path, monkeypatch, capsys):
    """The CLI frees the text encoder before it loads the transformer, so the transformer (and its quantization)
    loads inside the run: those seconds are load seconds, not lost, and the total is the load, the encoding, the
    steps and the decode together, in the JSON, the PNG and the summary line alike."""
    import time

    from quantbench.core.quant import calibration

    load_transformer = calibration.load_transformer
    monkeypatch.setattr(calibration, "load_transformer", lambda pipeline: time.sleep(0.6) or load_transformer(pipeline))
    out = tmp_path / "slow.png"
    assert main(["generate", "--prompt", "a red star", "--steps", "2", "-q", "4", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["load_seconds"] >= 0.6
    parts = (summary["load_seconds"] + summary["encode_seconds"] + sum(summary["step_seconds"])
             + summary["decode_seconds"])
    assert parts - 0.01 <= summary["total_seconds"] <= parts + 1.0  # what is left: freeing memory between phases
    png = read_png_metadata(out)
    assert (float(png["load_seconds"]), float(png["total_seconds"])) == (summary["load_seconds"], summary["total_seconds"])
    assert main(["generate", "--prompt", "a red star", "--steps", "2", "-q", "4", "--out", str(out), "--overwrite"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("time: "))
    load = float(line.split("load ")[1].split("s")[0])
    assert load >= 0.6 and "encode" in line and "decode" in line


def test_the_workbench_session_counts_a_lean_runs_transformer_load(tmp_path, monkeypatch):
    import time

    from quantbench.core.quant import calibration

    load_transformer = calibration.load_transformer
    monkeypatch.setattr(calibration, "load_transformer", lambda pipeline: time.sleep(0.6) or load_transformer(pipeline))
    session = WorkbenchSession(images_dir=tmp_path / "images", history=HistoryStore(tmp_path / "history.jsonl"))
    session.set_lean(True)
    outcome = session.run(GenerationRequest(model="demo", prompt="a red star", steps=2),
                          on_step=lambda step: None, cancel=CancelToken())
    assert outcome.load_seconds >= 0.6 and outcome.record["load_seconds"] == round(outcome.load_seconds, 3)
    assert outcome.record["total_seconds"] >= outcome.load_seconds + sum(outcome.result.step_seconds)


def test_a_lean_run_tells_each_component_it_loads_again_inside_the_run(tmp_path):
    """Lean memory frees the text encoder after encoding and the transformer before decoding: the next run on the same
    model loads them inside generate(), and says so (begin and end of each), as the first run's load is said."""
    from quantbench.core.pipeline_base import MemoryOptions

    slot, heard = ModelSlot(), []
    for prompt in ("a red star", "a blue ring"):
        heard.append([])
        generate_image(GenerationSettings(model="demo-turbo", prompt=prompt), images_dir=tmp_path, slot=slot,
                       memory=MemoryOptions.lean(), on_component_loading=lambda *told: heard[-1].append(told))
    assert heard[0] == [("transformer", False), ("transformer", True)]  # the text encoder loaded before the run
    assert heard[1] == [("text encoder", False), ("text encoder", True), ("transformer", False), ("transformer", True)]
