"""LoRAs by repo id (`--lora owner/name`) against a Hub on 127.0.0.1 (tests/fake_hub.py): `download --lora` fetches a
LoRA's .safetensors at the top of its repository and nothing else; generate fetches one the cache lacks, unless
--offline, where it says in one line how to get it; the record names the LoRA by its repo id."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_hub import FakeHub
from lora_files import linear_layers, lora_tensors, write_lora
from quantbench.core.random_model import write_random_model

LORA_REPO = "acme/style"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("model") / "tiny", "tiny")


@pytest.fixture
def hub(model, tmp_path):
    repo = tmp_path / "repo"
    layers = linear_layers(model, count=2)
    write_lora(repo / "style.safetensors", lora_tensors(layers, rank=2, scale=0.5))
    # a training checkpoint: not fetched unless named (other numbers: the cache shares a blob of equal bytes)
    write_lora(repo / "checkpoints" / "step-100.safetensors", lora_tensors(layers, rank=2, scale=0.5, seed=1))
    (repo / "README.md").write_text("a style\n")
    server = FakeHub(repo, LORA_REPO)
    yield server
    server.close()


def _quantbench(hub: FakeHub, tmp_path: Path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2", HF_HUB_DISABLE_XET="1",
               QUANTBENCH_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run([sys.executable, "-m", "quantbench.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


def _generate(hub, tmp_path, model, *extra):
    return _quantbench(hub, tmp_path, "generate", "--model", model, "--prompt", "a red ring", "--steps", 1,
                       "--width", 32, "--height", 32, "--quiet", "--json", *extra)


def test_download_fetches_the_loras_file_and_generate_then_runs_offline(hub, model, tmp_path):
    fetched = _quantbench(hub, tmp_path, "download", "--lora", LORA_REPO, "--json")
    assert fetched.returncode == 0, fetched.stderr
    report = json.loads(fetched.stdout)["loras"][0]
    assert report["downloaded"] is True and Path(report["file"]).name == "style.safetensors"
    assert hub.downloads() == ["style.safetensors"]  # not the README, not the training checkpoint
    again = _quantbench(hub, tmp_path, "download", "--lora", LORA_REPO)
    assert again.returncode == 0 and "already in the Hugging Face cache" in again.stdout
    run = _generate(hub, tmp_path, model, "--out", tmp_path / "a.png", "--offline", "--lora", f"{LORA_REPO}:0.5")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["loras"] == [[LORA_REPO, 0.5]]  # the repo id, not a path under the cwd


def test_offline_a_lora_the_cache_lacks_is_one_line_and_online_generate_fetches_it(hub, model, tmp_path):
    offline = _generate(hub, tmp_path, model, "--out", tmp_path / "a.png", "--offline", "--lora", LORA_REPO)
    assert offline.returncode == 2
    error = json.loads(offline.stdout)["error"]
    assert f"{LORA_REPO}: a LoRA not in the Hugging Face cache: quantbench download --lora {LORA_REPO}" in error
    assert not (tmp_path / "a.png").exists() and hub.downloads() == []
    online = _generate(hub, tmp_path, model, "--out", tmp_path / "b.png", "--lora", LORA_REPO)
    assert online.returncode == 0, online.stderr
    assert hub.downloads() == ["style.safetensors"]
    named = _generate(hub, tmp_path, model, "--out", tmp_path / "c.png", "--lora",
                      f"{LORA_REPO}/checkpoints/step-100.safetensors")
    assert named.returncode == 0, named.stderr
    assert sorted(hub.downloads()) == ["checkpoints/step-100.safetensors", "style.safetensors"]
