"""quantbench info and quantbench recommend, as a user runs them."""

import json
import subprocess
import sys

import psutil
import pytest

from quantbench.cli.main import main
from quantbench.core.cpu_blas import blas_status


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_shows_memory_and_backend(capsys):
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    labels = [line.split()[0] for line in out.splitlines()]
    # the quantized layers' CPU product, attention's, the elementwise work's
    kernels = ["cpu", "attention", "elementwise"] if "CPU only" in out else []
    # a note under the BLAS's line where OPENBLAS_CORETYPE holds it to older kernels than the CPU's
    blas = ["blas"] if blas_status().note else []
    assert labels == ["machine", "memory", "swap", "pressure", "mlx", "working", "cpu"] + blas + kernels
    total_gb = psutil.virtual_memory().total / 2 ** 30
    assert f"{total_gb:.1f} GB total" in out


def test_info_json(capsys):
    code, out, _ = run_cli(capsys, "info", "--json")
    data = json.loads(out)
    assert code == 0 and data["total_ram"] == psutil.virtual_memory().total
    assert data["backend"] in ("metal", "cuda", "cpu")
    if data["backend"] != "metal":
        assert data["recommended_working_set"] is None


def test_info_asks_each_kernel_and_the_blas_once(capsys, monkeypatch):
    """info --json asked each kernel's status (and the BLAS's) twice, once for the JSON and once for the text lines it
    does not print: now once, and the two agree."""
    from quantbench.cli import info

    asked = []
    for name in ("tile_kernel_status", "attention_kernel_status", "elementwise_kernel_status", "blas_status"):
        real = getattr(info, name)
        monkeypatch.setattr(info, name, lambda real=real, name=name: asked.append(name) or real())
    code, out, _ = run_cli(capsys, "info", "--json")
    cpu = json.loads(out)["backend"] == "cpu"
    kernels = ["attention_kernel_status", "elementwise_kernel_status", "tile_kernel_status"] if cpu else []
    assert code == 0 and sorted(asked) == sorted(["blas_status", *kernels])
    del asked[:]
    code, out, _ = run_cli(capsys, "info")
    assert code == 0 and len(asked) == 1 + 3 * cpu


def _row(out, model):
    return next(line for line in out.splitlines() if line.split() and line.split()[0].rstrip("*") == model)


def test_recommend_table_reads_at_a_glance_in_80_columns(capsys):
    code, out, _ = run_cli(capsys, "recommend", "--ram", "16")
    assert code == 0
    assert out.startswith("16 GB of memory (--ram), metal backend, 1024x1024")
    assert max(len(line) for line in out.splitlines()) <= 80
    assert _row(out, "klein-4b").split()[1:3] == ["yes", "bf16"]
    assert _row(out, "qwen-image").split()[1] == "no" and "needs 24 GB" in _row(out, "qwen-image")
    assert _row(out, "demo").split()[1:3] == ["yes", "bf16"]  # the built-in model runs anywhere
    assert _row(out, "z-image-turbo").split()[1:3] == ["yes", "q8"]
    assert _row(out, "qwen-image-2.1").split()[1:3] == ["yes", "q8"]
    assert "Best pick: qwen-image-2.1 at q8 (TE q8 alone, tiled 256). To run it:" in out  # 7B near-lossless
    # a whole 1024^2 decode alone is ~10 GB on Metal: the pick needs the tiled decode, and its command asks for it
    assert ("quantbench generate --model qwen-image-2.1 -q 8 --text-encoder-quantize 8 --vae-tile 256 "
            "--prompt 'a red fox in the snow' --out image.png") in " ".join(out.replace("\\\n", " ").split())


def test_recommend_json(capsys):
    code, out, _ = run_cli(capsys, "recommend", "--ram", "24", "--json")
    data = json.loads(out)
    assert code == 0 and data["budget"]["ram_bytes"] == 24 * 2 ** 30
    models = {m["model"]: m for m in data["models"]}
    assert models["flux1-dev"]["precision"] == "q8" and models["flux1-dev"]["status"] == "fits"
    assert models["qwen-image"]["quality"]["tier"] == 0
    assert models["demo"]["status"] == models["demo-turbo"]["status"] == "fits"


def test_recommend_one_model_lists_every_precision(capsys):
    code, out, _ = run_cli(capsys, "recommend", "--ram", "24", "--model", "Black-Forest-Labs/FLUX.2-klein-9B")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines() if line.split()][1:] .count("klein-9b") == 1
    table = out.splitlines()[-6:-2]
    assert [line.split()[0] for line in table] == ["bf16", "q8", "q6", "q4"]
    assert [line.split()[1] for line in table] == ["no", "yes", "yes", "yes"]
    assert max(len(line) for line in out.splitlines()) <= 80


def test_the_precision_tables_load_column_is_the_engines_streamed_load(capsys):
    """quantbench quantizes each layer as it reads it: loading a quantized model from the bf16 checkpoint takes
    less than loading it unquantized (the column showed a load that reads every bf16 weight first: more)."""
    code, out, _ = run_cli(capsys, "recommend", "--ram", "16", "--model", "klein-9b")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[-8:] if line[:4] in ("bf16", "q8  ", "q6  ",
                                                                                             "q4  ")}
    load = {prec: float(row[4]) for prec, row in rows.items()}  # prec fits peak GB load GB ...
    assert set(load) == {"bf16", "q8", "q6", "q4"}
    assert load["q4"] < load["q6"] < load["q8"] < load["bf16"]
    code, out, _ = run_cli(capsys, "recommend", "--ram", "16", "--model", "klein-9b", "--json")
    advised = json.loads(out)["models"][0]
    assert load[advised["precision"]] == round(advised["load_peak_bytes"] / 2 ** 30, 1)


def test_recommend_for_this_machine(capsys):
    code, out, _ = run_cli(capsys, "recommend", "--model", "klein-4b", "--size", "512x512")
    assert code == 0 and "(detected)" in out.splitlines()[0] and "512x512" in out


@pytest.mark.parametrize("argv,fragment", [
    (["--ram", "0"], "--ram 0: give the machine's memory in GB"),
    (["--ram", "-8"], "--ram -8:"),
    (["--ram", "1e9"], "--ram 1e9: give the machine's memory in GB, between 1 and 4096"),
    (["--ram", "lots"], "--ram 'lots'"),
    (["--ram", "16", "--model", "sdxl"], "unknown model 'sdxl'"),
    (["--ram", "16", "--size", "1000x1000"], "multiple of 16"),
])
def test_bad_input_is_one_line_on_stderr(capsys, argv, fragment):
    code, out, err = run_cli(capsys, "recommend", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("quantbench: error: ") and fragment in err


def test_exit_code_and_message_from_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "quantbench.cli.main", "recommend", "--ram", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "quantbench: error: --ram 0: give the machine's memory in GB, between 1 and 4096"]


def test_recommend_says_the_size_each_model_is_advised_at(capsys):
    """The header's size is every model's unless said otherwise: the built-in models are advised at their own
    64x64 (the header said 1024x1024 over them), and one model's table is drawn at its size and in its dtype, as
    its row (`--model demo` said 1024x1024 and 'bf16' beside a row of 'f32' at 64x64)."""
    code, out, _ = run_cli(capsys, "recommend", "--ram", "16")
    assert code == 0 and out.splitlines()[3] == "demo, demo-turbo at 64x64, their own size"
    code, out, _ = run_cli(capsys, "recommend", "--ram", "16", "--size", "512x512")
    assert code == 0 and "own size" not in out
    code, out, _ = run_cli(capsys, "recommend", "--ram", "16", "--model", "demo", "--backend", "cpu")
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith("cpu backend, 64x64") and _row(out, "demo").split()[2] == "f32"
    table = lines.index("quantbench demo, every precision with the plan that needs least memory")
    assert [line.split()[0] for line in lines[table + 2:table + 5]] == ["f32", "q8", "q4"]
    code, out, _ = run_cli(capsys, "recommend", "--ram", "16", "--model", "demo", "--json")
    assert code == 0 and (json.loads(out)["width"], json.loads(out)["height"]) == (64, 64)
