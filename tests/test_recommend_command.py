"""`quantbench recommend` ends its advice with the command that runs its best pick: one a user can paste into a
shell as printed, that asks generate for the plan the table advised."""

import json
import shlex

import pytest
from PIL import Image

from quantbench.cli.main import build_parser, main
from quantbench.core.catalog import find_entry
from quantbench.core.sources import catalog_repo_id


def printed_command(out: str) -> list[str]:
    """The command under "To run it:", its backslash-continued lines joined as a shell would."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith("To run it:")) + 1
    command = []
    for line in lines[start:]:
        command.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    return shlex.split(" ".join(command))


def test_the_printed_command_draws_the_best_pick(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["recommend", "--ram", "1"]) == 0  # only the built-in models fit
    out = capsys.readouterr().out
    assert "Best pick: demo at bf16 (as is). To run it:" in out
    argv = printed_command(out)
    assert argv[:2] == ["quantbench", "generate"]
    assert main([*argv[1:], "--quiet"]) == 0
    with Image.open(tmp_path / "image.png") as image:
        assert image.size == (64, 64)  # the built-in model's own size
        assert image.text["prompt"] == argv[argv.index("--prompt") + 1]


@pytest.mark.parametrize("args", [["--ram", "16"], ["--ram", "8"], ["--ram", "24", "--size", "512x768"],
                                  ["--ram", "12", "--model", "klein-9b"], ["--hosts", "2x8"]])
def test_the_printed_command_asks_generate_for_the_advised_plan(capsys, args):
    assert main(["recommend", *args]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    argv = printed_command(out)
    if "--hosts" in args:  # the transformer split across the hosts: the command runs under mlx.launch
        assert argv[:6] == ["mlx.launch", "--hostfile", "hosts.json", "--backend", "ring", "--"]
        assert "hosts.json stands for your mlx.launch hostfile" in " ".join(out.split())
        argv = argv[6:]
    assert main(["recommend", *args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    best = next(m for m in data["models"] if m["model"] == data["best_runnable"])
    assert argv[2:-4] == best["generate_arguments"]
    request = build_parser().parse_args(argv[1:])
    assert catalog_repo_id(request.model) == find_entry(best["model"]).repo  # generate's --model takes the id
    plan = best["plan"]
    assert plan["transformer"] == best["precision"]
    for asked, advised in ((request.quantize, plan["transformer"]),
                           (request.text_encoder_quantize, plan["text_encoder"])):
        assert asked == (advised[1:] if advised.startswith("q") else None)  # q8: -q 8; bf16: unquantized
    assert request.vae_tile == (plan["tile_size"] if plan["vae_tiling"] else None)
    if "--size" in args:
        assert (request.width, request.height) == (512, 768)
    else:
        assert request.width is None and request.height is None  # the model's own size, as advised


def test_with_a_hostfile_the_command_names_it(capsys, tmp_path):
    hosts = tmp_path / "my hosts.json"
    hosts.write_text(json.dumps([{"ssh": f"mac{i}", "ips": [f"10.0.0.{i}"], "memory_gb": 16} for i in (1, 2)]))
    assert main(["recommend", "--hosts", str(hosts)]) == 0
    out = capsys.readouterr().out
    assert printed_command(out)[:6] == ["mlx.launch", "--hostfile", str(hosts), "--backend", "ring", "--"]
    assert "stands for your mlx.launch hostfile" not in " ".join(out.split())
