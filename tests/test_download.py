"""`quantbench download` against a Hub on 127.0.0.1 (tests/fake_hub.py): it fetches a model once, without
generating, so that the workbench (which never downloads) and --offline runs have it; a second run asks the Hub
nothing; a download the cache's disk has no room for is refused before a byte is fetched."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fake_hub import COMMIT, REPO, FakeHub, hub, tiny_model  # noqa: F401 (the fixtures)



def _quantbench(hub: FakeHub, tmp_path: Path, *args, offline=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2", HF_HUB_DISABLE_XET="1",
               **({"HF_HUB_OFFLINE": "1"} if offline else {}))
    return subprocess.run([sys.executable, "-m", "quantbench.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_download_fetches_the_model_once_and_then_it_runs_offline(hub, tmp_path):
    first = _quantbench(hub, tmp_path, "download", "--model", REPO, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / COMMIT
    assert report["downloaded"] is True and Path(report["folder"]) == snapshot
    assert report["bytes"] == sum(len(data) for data in hub.files.values())
    assert sorted(hub.downloads()) == sorted(hub.files)  # every component file, each once
    asked = len(hub.requests)

    again = _quantbench(hub, tmp_path, "download", "--model", REPO)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == (f"{REPO}: {REPO}, already in the Hugging Face cache "
                                            f"({report['bytes'] / 2 ** 20:.2f} MB): {snapshot}")
    assert len(hub.requests) == asked  # a complete cached model is not asked of the Hub again

    out = tmp_path / "x.png"
    generated = _quantbench(hub, tmp_path, "generate", "--model", REPO, "--prompt", "a", "--width", "32", "--height",
                            "32", "--steps", "1", "--out", str(out), "--offline", "--quiet", offline=True)
    assert generated.returncode == 0, generated.stderr
    assert out.exists()


def test_a_download_the_disk_has_no_room_for_is_refused_before_a_byte_is_fetched(hub, tmp_path):
    shard = sorted(f for f in hub.files if f.endswith(".safetensors"))[0]
    hub.listed_sizes[shard] = 2 ** 60  # an exabyte: more than any disk has free
    result = _quantbench(hub, tmp_path, "download", "--model", REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"quantbench: error: {tmp_path / 'hub' / 'models--acme--tiny'}: downloading {REPO} "
                           "needs about ")
    assert line.endswith("free: free some space there or point HF_HUB_CACHE at a disk with room")
    assert hub.downloads() == []
    # generate downloads the same way, and is refused the same way
    generated = _quantbench(hub, tmp_path, "generate", "--model", REPO, "--prompt", "a", "--out",
                            str(tmp_path / "x.png"))
    assert generated.returncode == 2 and generated.stderr.strip().splitlines()[-1] == line
    assert hub.downloads() == [] and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("model, says", [("demo", "demo: built in, nothing to download"),
                                         ("FOLDER", "FOLDER: a local folder, nothing to download")])
def test_a_model_already_on_disk_is_not_downloaded(hub, tmp_path, tiny_model, model, says):
    model = str(tiny_model) if model == "FOLDER" else model
    result = _quantbench(hub, tmp_path, "download", "--model", model)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(says.replace("FOLDER", str(tiny_model)))
    assert hub.requests == []


def test_a_repo_no_family_runs_is_one_line_and_the_hub_down_is_one_line(hub, tmp_path):
    hub.files["model_index.json"] = json.dumps({"_class_name": "StableDiffusionXLPipeline"}).encode()
    result = _quantbench(hub, tmp_path, "download", "--model", REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "StableDiffusionXLPipeline" in result.stderr.strip().splitlines()[-1]
    hub.fail = (503, None)
    down = _quantbench(hub, tmp_path / "other", "download", "--model", REPO, "--quiet")
    assert down.returncode == 2
    assert down.stderr.strip().splitlines() == [
        f"quantbench: error: {REPO}: not in the Hugging Face cache and could not be downloaded (the Hub answered "
        "503, a server error: try again later); missing: model_index.json and every component folder"]


def test_a_cache_that_cannot_be_written_is_said_before_the_hub_is_asked(hub, tmp_path):
    """huggingface_hub only warned as it went, and the failure read "the Hub could not be reached"."""
    (tmp_path / "hub").write_text("a file where the cache's folder should be")
    result = _quantbench(hub, tmp_path, "download", "--model", REPO)
    assert result.returncode == 2 and hub.requests == []
    assert result.stderr.strip().splitlines()[-1] == (
        f"quantbench: error: {tmp_path / 'hub'}: the Hugging Face cache cannot be written (a file, not a folder): "
        "point HF_HUB_CACHE at a folder you can write")


def test_a_download_that_fills_the_disk_says_so_not_that_the_hub_is_unreachable():
    import errno

    from quantbench.core.sources import _download_failure

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as full:
            raise RuntimeError("download failed") from full
    except RuntimeError as exc:
        assert _download_failure(exc) == "the Hugging Face cache could not be written: No space left on device"
