"""A destination whose disk clearly lacks the room is refused before the long work, in one line; a disk that
fills up midway leaves nothing half-written and nothing replaced."""

import os
import shutil
import sys
from collections import namedtuple

import pytest

from quantbench.cli.main import main
from quantbench.core.disk_space import folder_bytes
from quantbench.core.memory import format_bytes
from quantbench.core.random_model import random_model_bytes
from quantbench.core.saved_models import saved_model_bytes
from quantbench.core.sources import resolve_model_folder

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def disk_with(monkeypatch):
    """Make every disk report `free` bytes free (what shutil.disk_usage says; the file system is the real one)."""
    def set_free(free: int):
        monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 * free + 1, 9 * free, free))
    return set_free


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("quantbench:")]
    assert len(ours) == 1 and ours[0].startswith("quantbench: error:") and "Traceback" not in err, err
    return ours[0]


def test_the_saved_model_estimate_is_a_close_lower_bound_of_what_save_writes(tmp_path, capsys):
    folder = resolve_model_folder("demo")
    for bits in (4, 8):
        out = tmp_path / f"q{bits}"
        assert main(["save", "--model", "demo", "-q", str(bits), "--out", str(out)]) == 0
        written, estimate = folder_bytes(out), saved_model_bytes("demo", folder, bits, None)
        assert 0.8 * written <= estimate <= written, (bits, estimate, written)


def test_save_onto_a_disk_without_the_room_is_refused_before_loading(tmp_path, monkeypatch, capsys, disk_with):
    import quantbench.cli.save as save
    monkeypatch.setattr(save, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model it cannot save"))
    estimate = saved_model_bytes("demo", resolve_model_folder("demo"), 4, None)
    disk_with(estimate - 1)
    assert main(["save", "--model", "demo", "-q", "4", "--out", str(tmp_path / "saved")]) == 2
    line = one_error_line(capsys)
    assert f"{tmp_path / 'saved'}: the saved model needs about" in line and "free" in line, line
    assert list(tmp_path.iterdir()) == []


def test_an_auto_budget_is_refused_before_its_search_when_even_two_bits_would_not_fit(tmp_path, monkeypatch, capsys,
                                                                                     disk_with):
    import quantbench.core.lab.quantize_option as quantize_option
    monkeypatch.setattr(quantize_option, "make_plan", lambda *a, **k: pytest.fail("searched a plan it cannot save"))
    disk_with(saved_model_bytes("demo", resolve_model_folder("demo"), 2, None) - 1)
    assert main(["save", "--model", "demo", "-q", "auto:4", "--out", str(tmp_path / "saved")]) == 2
    assert "the saved model needs about" in one_error_line(capsys)


@pytest.mark.parametrize("arch, width", [("tiny", 1.0), ("klein-4b", 0.0625), ("z-image", 0.0625),
                                         ("qwen-image-2.1", 0.0625)])
def test_the_random_model_estimate_is_a_close_lower_bound_of_what_it_writes(arch, width, tmp_path, capsys):
    out = tmp_path / arch
    assert main(["random-model", "--arch", arch, "--width-scale", str(width), "--out", str(out)]) == 0
    written, estimate = folder_bytes(out), random_model_bytes(arch, width)
    assert 0.8 * written <= estimate <= written, (arch, estimate, written)


def test_random_model_onto_a_disk_without_the_room_for_the_whole_model_is_refused_before_any_write(
        tmp_path, monkeypatch, capsys, disk_with):
    """The whole model's room, up front: a disk with room for the transformer but not the rest is refused
    before the transformer is drawn and written (it was refused at the text encoder, after the transformer)."""
    import quantbench.core.random_weights as random_weights
    monkeypatch.setattr(random_weights, "write_safetensors", lambda *a, **k: pytest.fail("wrote a tensor"))
    estimate = random_model_bytes("tiny")
    disk_with(estimate - 1)
    assert main(["random-model", "--arch", "tiny", "--out", str(tmp_path / "random")]) == 2
    line = one_error_line(capsys)
    assert f"{tmp_path / 'random'}: the random model needs about {format_bytes(estimate)}" in line, line
    assert f"{format_bytes(estimate - 1)} free" in line
    assert list(tmp_path.iterdir()) == []


def test_random_model_still_checks_each_component_as_it_comes(tmp_path, monkeypatch, capsys):
    """The disk is shared: one that had the room up front but fills before the text encoder is refused there."""
    estimate = random_model_bytes("tiny")
    asked = []

    def shrinking(path):  # room for the whole model at first; then for a few bytes only
        asked.append(path)
        free = 10 * estimate if len(asked) <= 2 else 1000
        return Usage(100 * estimate, 90 * estimate, free)

    monkeypatch.setattr(shutil, "disk_usage", shrinking)
    assert main(["random-model", "--arch", "tiny", "--out", str(tmp_path / "random")]) == 2
    line = one_error_line(capsys)
    assert f"{tmp_path / 'random' / 'text_encoder'}: this component of the random model needs about" in line, line
    assert list(tmp_path.iterdir()) == []  # the transformer it had written went with the staging folder


@pytest.mark.parametrize("command, free", [
    (["compare", "--model", "demo", "--prompt", "a red star", "--width", "512", "--height", "512", "--out", "{dir}/c"],
     100_000),
    # The model's own size (64x64 for demo: 12 pictures of 4096 bytes at least), known once the model is found.
    (["compare", "--model", "demo", "--prompt", "a red star", "--out", "{dir}/c"], 40_000),
    (["generate", "--model", "demo", "--prompt", "a red star", "--width", "512", "--height", "512", "--out",
      "{dir}/x.png"], 100_000),
    (["generate", "--model", "demo", "--prompt", "a red star", "--out", "{dir}/x.png"], 4000),
])
def test_pictures_onto_a_full_disk_are_refused_before_drawing(command, free, tmp_path, monkeypatch, capsys, disk_with):
    from quantbench.core import pipelines
    monkeypatch.setattr(pipelines, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model it cannot write"))
    disk_with(free)
    assert main([a.replace("{dir}", str(tmp_path)) for a in command]) == 2
    assert "needs about" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_disk_that_fills_up_midway_keeps_the_random_model_it_was_to_replace(tmp_path, monkeypatch, capsys):
    import quantbench.core.random_weights as random_weights
    out = tmp_path / "random"
    assert main(["random-model", "--arch", "tiny", "--out", str(out)]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real, written = random_weights.write_safetensors, []

    def fills_up(path, *args, **kwargs):
        if written:  # the first file went in; the disk is full at the second
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise OSError(28, "No space left on device", str(path))
        written.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(random_weights, "write_safetensors", fills_up)
    assert main(["random-model", "--arch", "tiny", "--seed", "1", "--out", str(out), "--overwrite"]) == 2
    assert "No space left on device" in one_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["random"]  # no staging left
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_disk_that_fills_up_at_the_tokenizer_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """The tokenizers library says a full disk as a plain Exception ("No space left on device (os error 28)"): with the
    weights written and a few KB left for tokenizer.json, `random-model` ended in a traceback and exit 1."""
    import quantbench.core.random_weights as random_weights

    real = random_weights.train_tokenizer
    out = tmp_path / "random"

    class FillsUp:  # the disk of `out` is full; the size estimate's scratch folder (elsewhere) is not
        def __init__(self, corpus, vocab_size):
            self.tokenizer = real(corpus, vocab_size)

        def save(self, path):
            if not path.startswith(str(tmp_path)):
                return self.tokenizer.save(path)
            with open(path, "w") as f:
                f.write('{"half": ')
            raise Exception("No space left on device (os error 28)")

    monkeypatch.setattr(random_weights, "train_tokenizer", FillsUp)
    assert main(["random-model", "--arch", "tiny", "--width-scale", "0.25", "--out", str(out)]) == 2
    assert one_error_line(capsys) == f"quantbench: error: {out}: could not be written (No space left on device)"
    assert list(tmp_path.iterdir()) == []  # no staging left, no half model


@pytest.mark.parametrize("command", [
    ["plan", "--model", "demo", "-q", "auto:4.5", "--out", "{dir}/plan.json"],
    ["sensitivity", "--model", "demo", "-q", "auto:4.5", "--plan-out", "{dir}/plan.json"],
])
def test_a_plan_onto_a_full_disk_is_refused_before_the_search(command, tmp_path, monkeypatch, capsys, disk_with):
    from quantbench.core import pipelines
    from quantbench.core.lab.plans import plan_file_bytes
    from quantbench.core.lab.structure import transformer_structure
    monkeypatch.setattr(pipelines, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model for a plan it cannot write"))
    needed = plan_file_bytes(transformer_structure(resolve_model_folder("demo")))
    disk_with(needed - 1)
    assert main([a.replace("{dir}", str(tmp_path)) for a in command]) == 2
    assert f"{tmp_path / 'plan.json'}: the plan needs about {format_bytes(needed)}" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_the_plan_estimate_is_a_lower_bound_of_the_smallest_plan_file(tmp_path):
    """Every layer at one digit of bits, the fewest bytes a plan of the model can take."""
    from quantbench.core.lab.layer_bytes import quantizable_layers
    from quantbench.core.lab.plans import QuantPlan, plan_file_bytes
    from quantbench.core.lab.structure import transformer_structure
    for model in ("demo", "demo-turbo"):
        transformer = transformer_structure(resolve_model_folder(model))
        written = QuantPlan({path: 4 for path in quantizable_layers(transformer)}).save(tmp_path / f"{model}.json")
        assert 0.7 * written.stat().st_size <= plan_file_bytes(transformer) <= written.stat().st_size


@pytest.mark.skipif(sys.platform != "linux", reason="MLX builds its kernels with g++ on its Linux CPU backend")
def test_a_full_temporary_folder_for_mlxs_kernels_is_one_line(tmp_path):
    """MLX's CPU backend builds each mx.compile'd function with g++ in $TMPDIR/mlx: with that disk full (here files
    limited to 4 KB, as `ulimit -f` does) `generate` ended in a traceback with g++'s whole output, exit 1."""
    import resource
    import subprocess

    import mlx.core as mx

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "a.png"
    result = subprocess.run([sys.executable, "-m", "quantbench.cli.main", "generate", "--prompt", "a red star",
                             "--steps", "1", "--out", str(out)], env=env, preexec_fn=limited, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1] == (
        f"quantbench: error: MLX could not build a CPU kernel in {tmp_path / 'tmp' / 'mlx' / mx.__version__ / 'cpu'} "
        "(File too large): free some space there, or point TMPDIR at a folder with room")
    assert "Traceback" not in result.stderr and not out.exists()
