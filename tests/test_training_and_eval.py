"""The training script that rebuilds the built-in models refuses bad input before its long work and writes its
folders whole, and `quantbench eval` refuses bad input in one line. Its end-to-end run, which trains with torch,
is in test_training_run.py (run alone). (The shipped models' own tests come with them.)"""

import json
import sys
from pathlib import Path

import pytest

from quantbench.cli.eval import parse_precisions
from quantbench.cli.main import main
from quantbench.core.builtin.captions import caption
from quantbench.core.builtin.world import eval_prompts
from quantbench.core.families.flux2.pipeline import Flux2Pipeline

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args,message", [
    (["--model", "nope"], "nope: no such folder"),
    (["--quantize", "7"], "unsupported quantization '7'"),
    (["--precisions", "bf16,2:foo"], "unsupported quantization '2:foo'"),
    (["--limit", "0"], "--limit 0"),
])
def test_eval_bad_input_is_one_line(capsys, args, message):
    assert main(["eval", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantbench: error:") and message in err[0]


def test_precisions_put_the_reference_first():
    assert parse_precisions("4,bf16,8,4", None) == ("unquantized", "4", "8")
    assert parse_precisions(None, "3") == ("unquantized", "3")


def test_eval_and_its_draw_say_progress_alike():
    """`quantbench eval` and EvalSet.draw (benchmarks/quantizers.py) report every 25th picture and the last."""
    from quantbench.cli.eval import EvalSet, evaluate
    from quantbench.core.pipelines import load_pipeline
    said_by_eval, said_by_draw = [], []
    evaluate("demo-turbo", ("unquantized",), limit=27, progress=said_by_eval.append)
    eval_set = EvalSet("demo-turbo", limit=27)
    eval_set.draw(load_pipeline(eval_set.folder, allow_download=False), said_by_draw.append, "unquantized")
    expected = ["demo-turbo unquantized: 25/27 images", "demo-turbo unquantized: 27/27 images"]
    assert [line for line in said_by_eval if "images" in line] == expected
    assert said_by_draw == expected


# ---------------------------------------------------------------------------------------------
# training/train_demo.py refuses before its long work, and writes its folders whole
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_demo():
    """The training script as a module (it is a script, not part of the package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("train_demo", REPO / "training" / "train_demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_demo"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("train_demo", None)


def _train(train_demo, argv):
    try:
        return train_demo.main(argv)
    except SystemExit as done:  # argparse's own refusals exit
        return done.code


def _bad_run(tmp_path, unwritable_folder, monkeypatch):
    """(arguments, what the one line says, how the folders are set up) for each refusal."""
    work, out = tmp_path / "work", tmp_path / "out"

    def existing_demo():
        (out / "demo").mkdir(parents=True)
        (out / "demo" / "mine.txt").write_text("keep me")

    def corrupt_log():
        work.mkdir()
        (work / "training_log.json").write_text("{half a log")

    def full_disk():
        import collections
        import shutil
        usage = collections.namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 9 << 20, 1 << 20))

    def a_file():
        tmp_path.joinpath("notes").write_text("mine")

    return {
        "unknown stage": (["--stage", "bogus"], "invalid choice: 'bogus'", None),
        "unknown field": (["--set", "nope=1"], "--set nope=1: expected FIELD=VALUE", None),
        "not a number": (["--set", "steps=abc"], "steps takes whole numbers", None),
        "zero steps": (["--set", "steps=0"], "steps must be above 0", None),
        "not a float": (["--set", "lr=nan"], "lr takes numbers", None),
        # int() took these as 10: only plain digits are numbers (core/numbers.py)
        "underscored": (["--set", "steps=1_0"], "steps takes whole numbers", None),
        "other digits": (["--set", "steps=\u0661\u0660"], "steps takes whole numbers", None),
        "spaced": (["--set", "text_out_layers=1, 2"], "text_out_layers takes whole numbers", None),
        # no upper bound: a run of 10**12 steps started, and a learning rate of 50 diverged
        "too many steps": (["--set", "steps=1000000000000"], "steps must be at most 1,000,000", None),
        "too large a rate": (["--set", "lr=50"], "lr must be at most 1", None),
        "too many pairs": (["--set", "teacher_pairs=10000000"], "teacher_pairs must be at most 100,000", None),
        "too large a model": (["--set", "heads=128", "--set", "head_dim=512"], "these sizes make models of", None),
        "a paste": (["--set", "steps=" + "9" * 5000], "steps takes whole numbers", None),
        "no such model": (["--set", "vae_groups=3"], "these sizes do not make a model", None),
        "past the last layer": (["--set", "text_out_layers=1,5"], "reads past the text encoder's 2 layers", None),
        "no earlier stage": (["--stage", "distill"], "needs " + str(work / "tokenizer"), None),
        "out is a file": (["--out", str(tmp_path / "notes")], "exists and is not a folder", a_file),
        "unwritable out": (["--out", str(unwritable_folder / "models")], "cannot write in", None),
        "existing model": ([], f"{out / 'demo'} already exists (pass --overwrite to replace it)", existing_demo),
        "corrupt log": ([], "not a training log this script wrote", corrupt_log),
        "no room": ([], "this training needs about", full_disk),
        "empty work": (["--work", ""], "--work is empty: give a value", None),  # trained in the current folder
    }


@pytest.mark.parametrize("case", ["unknown stage", "unknown field", "not a number", "zero steps", "not a float",
                                  "underscored", "other digits", "spaced", "too many steps", "too large a rate",
                                  "too many pairs", "too large a model", "a paste",
                                  "no such model", "past the last layer", "no earlier stage", "out is a file",
                                  "unwritable out", "existing model", "corrupt log", "no room", "empty work"])
def test_train_demo_refuses_bad_arguments_in_one_line_before_writing(case, train_demo, tmp_path, unwritable_folder,
                                                                      monkeypatch, capsys):
    argv, message, setup = _bad_run(tmp_path, unwritable_folder, monkeypatch)[case]
    if setup is not None:
        setup()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.setattr(train_demo, "_train", lambda *a, **k: pytest.fail("started training"))
    capsys.readouterr()
    code = _train(train_demo, ["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("quantbench: error:") and message in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    if case == "existing model":
        assert (tmp_path / "out" / "demo" / "mine.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def quick_parts(train_demo, tmp_path_factory):
    """A --work folder with a tokenizer and a VAE, and the untrained --quick text encoder and transformer."""
    import torch
    from quantbench.core.blocks.tokenizer_files import train_tokenizer, write_tokenizer_folder
    work = tmp_path_factory.mktemp("work")
    cfg = train_demo.QUICK
    write_tokenizer_folder(train_tokenizer([caption(s) for s in eval_prompts()[:50]], 300), work / "tokenizer")
    torch.manual_seed(0)
    train_demo.build_vae(cfg).save_pretrained(work / "vae", safe_serialization=True)
    vocab = train_demo.padded_vocab(work / "tokenizer")
    return cfg, work, train_demo.build_text_encoder(cfg, vocab), train_demo.build_transformer(cfg)


def test_train_demo_writes_a_model_folder_whole_and_replaces_only_when_asked(train_demo, quick_parts, tmp_path):
    cfg, work, text_encoder, transformer = quick_parts
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "README.md").write_text("the card")

    def write(overwrite):
        train_demo.write_model_folder(demo, cfg, work, text_encoder, transformer, distilled=False, steps=20,
                                      guidance=2.0, overwrite=overwrite)

    from quantbench.core.atomic import OutputError
    with pytest.raises(OutputError, match="already exists"):
        write(False)
    assert [p.name for p in tmp_path.iterdir()] == ["demo"] and [p.name for p in demo.iterdir()] == ["README.md"]
    write(True)  # replaced whole, its card carried over; no staging left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    assert (demo / "README.md").read_text() == "the card"
    assert json.loads((demo / "model_index.json").read_text())["default_steps"] == 20
    assert Flux2Pipeline.load(demo, allow_download=False).info.folder == demo


def test_train_demo_a_disk_that_fills_up_midway_is_one_line(train_demo, tmp_path, monkeypatch, capsys):
    """--work's intermediate results (torch.save, the tokenizer folder) on a disk that fills up during the
    training: one line and exit 2, not a traceback."""
    import errno

    def full(cfg, work):
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "tokenizer"))

    monkeypatch.setattr(train_demo, "stage_tokenizer", full)
    capsys.readouterr()
    code = _train(train_demo, ["--quick", "--stage", "tokenizer", "--work", str(tmp_path / "work"), "--out",
                               str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"quantbench: error: {tmp_path / 'work' / 'tokenizer'}: could not be written (No "
                                 "space left on device)"], err


def test_train_demo_leaves_the_callers_floating_point_mode_as_it_was(train_demo, tmp_path, monkeypatch):
    """Run in-process (as these tests do), the script's subnormal flushing stayed on after it returned and broke
    a later test's float generator: it now flushes only while it trains."""
    import numpy as np
    import torch
    tiny = np.float32(1e-40)  # subnormal
    monkeypatch.setattr(train_demo, "stage_tokenizer", lambda cfg, work: {"flushed": bool(torch.tensor(tiny) * 1 == 0)})
    threads = torch.get_num_threads()
    assert _train(train_demo, ["--quick", "--stage", "tokenizer", "--work", str(tmp_path / "work"), "--out",
                               str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "work" / "training_log.json").read_text())["tokenizer"] == {"flushed": True}
    assert (torch.tensor(tiny) * 1).item() != 0 and torch.get_num_threads() == threads


# ---------------------------------------------------------------------------------------------
# --work's results between stages: written whole, and a damaged one refused in one line
# ---------------------------------------------------------------------------------------------

def _work_with_results(train_demo, quick_parts, tmp_path):
    """A --work folder as the tokenizer, vae and transformer stages leave it, and --out with the demo folder."""
    import shutil
    import torch
    cfg, parts, text_encoder, transformer = quick_parts
    work, out = tmp_path / "work", tmp_path / "out"
    shutil.copytree(parts / "tokenizer", work / "tokenizer")
    shutil.copytree(parts / "vae", work / "vae")
    train_demo.save_work_file({"tokens": torch.zeros(4, 16, 4 * cfg.latent_channels)}, work / "latents.pt")
    train_demo.save_work_file({"text_encoder": text_encoder.state_dict(), "transformer": transformer.state_dict(),
                               "vocab": train_demo.padded_vocab(work / "tokenizer")}, work / "demo.pt")
    (out / "demo").mkdir(parents=True)
    (out / "demo" / "model_index.json").write_text(json.dumps({"default_guidance": 2.0}))
    return work, out


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {  # (what is damaged, the stage then run, what the line says, the stage it says to run again)
    "half a latents.pt": (lambda w, o: _cut(w / "latents.pt"), "transformer", "latents.pt: damaged or incomplete",
                          "vae"),
    "half a demo.pt": (lambda w, o: _cut(w / "demo.pt"), "distill", "demo.pt: damaged or incomplete", "transformer"),
    "another pickle": (lambda w, o: __import__("torch").save({"x": 1}, w / "demo.pt"), "distill",
                       "demo.pt: damaged or incomplete (not what the transformer stage writes)", "transformer"),
    "half the vae weights": (lambda w, o: _cut(w / "vae" / "diffusion_pytorch_model.safetensors"), "transformer",
                             "vae: damaged or incomplete (diffusion_pytorch_model.safetensors: truncated", "vae"),
    "no vae config": (lambda w, o: (w / "vae" / "config.json").unlink(), "distill",
                      "vae: damaged or incomplete (config.json: No such file or directory)", "vae"),
    "half a tokenizer": (lambda w, o: _cut(w / "tokenizer" / "tokenizer.json"), "transformer",
                         "tokenizer: damaged or incomplete", "tokenizer"),
    "half a model index": (lambda w, o: (o / "demo" / "model_index.json").write_text('{"default_gu'), "distill",
                           "model_index.json: damaged or incomplete", "transformer"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_train_demo_refuses_a_damaged_result_of_an_earlier_stage_in_one_line(case, train_demo, quick_parts, tmp_path,
                                                                             monkeypatch, capsys):
    """A checkpoint cut short in --work (by a crash before these writes were staged, or by hand) was read at the
    start of the stage after the earlier stages' hours, as a traceback; now it is one line before any training,
    naming the stage that writes it again."""
    work, out = _work_with_results(train_demo, quick_parts, tmp_path)
    damage, stage, message, producer = DAMAGE[case]
    damage(work, out)
    monkeypatch.setattr(train_demo, "_train", lambda *a, **k: pytest.fail("started training"))
    capsys.readouterr()
    code = _train(train_demo, ["--quick", "--stage", stage, "--overwrite", "--work", str(work), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("quantbench: error: ") and message in err[0], err
    assert f"run --stage {producer} again with this" in err[0] and err[0].endswith("or --stage all"), err


def test_train_demo_the_results_it_reads_pass_the_check(train_demo, quick_parts, tmp_path):
    """The check refuses only what is damaged: what the stages write passes it."""
    work, out = _work_with_results(train_demo, quick_parts, tmp_path)
    train_demo.check_stages(("distill",), work, out)
    train_demo.check_stages(("transformer",), work, out)
    assert train_demo.load_work_file(work / "demo.pt")["vocab"] == train_demo.padded_vocab(work / "tokenizer")


def test_train_demo_a_full_disk_mid_write_leaves_the_earlier_result_whole(train_demo, quick_parts, tmp_path,
                                                                          monkeypatch):
    """The checkpoints and folders in --work are staged and renamed into place: a write the disk cannot finish
    leaves the earlier result as it was (not half of a new one that a later run reads) and no staging."""
    import errno
    import os
    import torch
    from quantbench.core import atomic
    work, _ = _work_with_results(train_demo, quick_parts, tmp_path)
    before = (work / "latents.pt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError) as raised:
        train_demo.save_work_file({"tokens": torch.ones(512, 16, 128)}, work / "latents.pt")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(work / "latents.pt")
    assert (work / "latents.pt").read_bytes() == before
    assert sorted(p.name for p in work.iterdir()) == ["demo.pt", "latents.pt", "tokenizer", "vae"]
    monkeypatch.undo()

    # The tokenizer stage, its folder half-written when the disk fills: the earlier tokenizer stays, one line.
    tokenizer_files = {p.name: p.read_bytes() for p in (work / "tokenizer").iterdir()}

    def half_a_folder(tokenizer, folder):
        (folder / "tokenizer.json").write_text('{"half')
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "tokenizer_config.json"))

    monkeypatch.setattr(train_demo, "write_tokenizer_folder", half_a_folder)
    monkeypatch.setattr(train_demo, "train_tokenizer", lambda corpus, vocab: None)
    monkeypatch.setattr(train_demo, "PromptTokenizer", lambda folder: pytest.fail("read a half-written tokenizer"))
    code = _train(train_demo, ["--quick", "--stage", "tokenizer", "--work", str(work), "--out", str(tmp_path / "o")])
    assert code == 2
    assert {p.name: p.read_bytes() for p in (work / "tokenizer").iterdir()} == tokenizer_files
    assert not [p for p in work.iterdir() if p.name.startswith(".")]
    assert os.listdir(work / "tokenizer")


def test_train_demo_a_library_that_reports_a_full_disk_its_own_way_is_one_line(train_demo, tmp_path, monkeypatch,
                                                                              capsys):
    """safetensors and tokenizers say a full disk as their own exception ("SafetensorError: ... I/O error: No space
    left on device (os error 28)"): a traceback once --out filled up mid-save. Now one line, the staging removed."""
    def full(tokenizer, folder):
        (folder / "tokenizer.json").write_text("{")
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(train_demo, "write_tokenizer_folder", full)
    monkeypatch.setattr(train_demo, "train_tokenizer", lambda corpus, vocab: None)
    work = tmp_path / "work"
    capsys.readouterr()
    code = _train(train_demo, ["--quick", "--stage", "tokenizer", "--work", str(work), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"quantbench: error: {work / 'tokenizer'}: could not be written (No space left on "
                                 "device)"], err
    assert [p.name for p in work.iterdir()] == []
