"""Saved quantized models: load without the bf16 weights, same pixels, refuse to requantize, never half-written."""

import json
import shutil

import numpy as np
import mlx.nn as nn
import pytest

from quantbench.cli.main import main
from quantbench.core.atomic import OutputError
from quantbench.core.errors import CheckpointError, InvalidRequest
from quantbench.core.families.flux2.pipeline import Flux2Pipeline
from quantbench.core.random_model import write_random_model
from quantbench.core.saved_models import save_quantized


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("src") / "tiny", "tiny", distilled=False)


@pytest.fixture(scope="module")
def saved(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "tiny-q4"
    assert main(["save", "--model", str(source), "-q", "4", "--text-encoder-quantize", "8", "--out", str(out)]) == 0
    return out


def _image(model, **kwargs):
    args = dict(steps=3, width=64, height=64, seed=4, negative_prompt="blurry")
    return np.asarray(model.generate("a red star", **{**args, **kwargs}).image)


def test_round_trip_gives_bitwise_the_same_image(source, saved):
    on_the_fly = Flux2Pipeline.load(source, quantize=4, text_encoder_quantize=8)
    loaded = Flux2Pipeline.load(saved)
    assert np.array_equal(_image(on_the_fly), _image(loaded))


def test_saved_folder_says_what_it_is(source, saved):
    model = Flux2Pipeline.load(saved)
    transformer, text = model.info.quantization
    assert transformer.prequantized and transformer.bits_label == "4-bit"
    assert text.prequantized and text.bits_label == "8-bit"
    assert model.info.transformer_bits == 4 and model.info.text_encoder_bits == 8
    assert isinstance(model.transformer.transformer_blocks[0].attn.to_q, nn.QuantizedLinear)
    index = json.loads((saved / "model_index.json").read_text())
    assert index["quantbench_saved"]["transformer"] == "4-bit"
    # Smaller than its source, and carrying no bf16 copy of the quantized layers.
    size = lambda folder: sum(f.stat().st_size for f in (folder / "transformer").glob("*.safetensors"))
    assert size(saved) < 0.5 * size(source)


def test_asking_for_other_bits_is_refused(saved):
    with pytest.raises(InvalidRequest, match="holds a 4-bit transformer saved by quantbench .* cannot be requantized"):
        Flux2Pipeline.load(saved, quantize=8)
    Flux2Pipeline.load(saved, quantize=4)  # the same precision is fine


def test_missing_or_corrupt_shard_is_one_line(saved, tmp_path):
    broken = shutil.copytree(saved, tmp_path / "broken")
    shard = next((broken / "transformer").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated safetensors file"):
        Flux2Pipeline.load(broken)
    shard.unlink()
    with pytest.raises(CheckpointError, match="no .safetensors weights"):
        Flux2Pipeline.load(broken)


def test_an_interrupted_save_leaves_nothing_that_looks_like_a_model(source, tmp_path, monkeypatch):
    import quantbench.core.saved_models as saved_models

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    model = Flux2Pipeline.load(source, quantize=4)
    monkeypatch.setattr(saved_models, "write_safetensors", fail)
    with pytest.raises(OutputError, match="could not be written .No space left on device"):
        save_quantized(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_copying_the_small_folders_is_one_plain_line(source, tmp_path, monkeypatch, capsys):
    """shutil.copytree gathers its files' errors in a list: the message was that list's repr, paths and all."""
    import quantbench.core.saved_models as saved_models

    def full(source_file, destination):
        raise OSError(28, "No space left on device", destination)

    real = shutil.copytree
    monkeypatch.setattr(saved_models.shutil, "copytree", lambda a, b, **kw: real(a, b, copy_function=full))
    assert main(["save", "--model", str(source), "-q", "4", "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"quantbench: error: {tmp_path / 'out'}: could not be written (No space left on device)"]
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_bad_input(source, tmp_path, capsys):
    assert main(["save", "--model", str(source), "-q", "7", "--out", str(tmp_path / "x")]) == 2
    assert main(["save", "--model", str(source), "-q", "bf16", "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "exists").mkdir()
    assert main(["save", "--model", str(source), "-q", "4", "--out", str(tmp_path / "exists")]) == 2
    err = capsys.readouterr().err
    assert "unsupported quantization '7'" in err and "saves nothing new" in err and "already exists" in err


def test_a_lean_pipeline_can_be_saved_too(source, tmp_path):
    from quantbench.core.pipeline_base import MemoryOptions

    lean = Flux2Pipeline.load(source, quantize=4, memory=MemoryOptions(evict_text_encoder=True))
    assert lean.transformer is None
    out = save_quantized(lean, tmp_path / "lean-q4")
    assert Flux2Pipeline.load(out).info.transformer_bits == 4


def test_save_a_mixed_precision_plan(source, tmp_path, capsys):
    out = tmp_path / "mixed"
    assert main(["save", "--model", str(source), "-q", "auto:4.5", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["transformer"].startswith("mixed")
    loaded = Flux2Pipeline.load(out)
    assert loaded.info.transformer_bits == "mixed"
    assert len(set(loaded.info.quantization[0].layers.values())) > 1
    with pytest.raises(InvalidRequest, match="cannot be requantized"):
        Flux2Pipeline.load(out, quantize=4)
