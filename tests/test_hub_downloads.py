"""Loading by repo id against a real HTTP Hub on 127.0.0.1 (tests/fake_hub.py): a first download, one cut part
way and finished by the next run, the Hub's refusals and silences, a damaged cache. Each is one line and exit 2."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_hub import COMMIT, REPO, FakeHub, hub, tiny_model  # noqa: F401 (the fixtures)



def _shard(hub: FakeHub) -> str:
    return sorted(f for f in hub.files if f.startswith("transformer/") and f.endswith(".safetensors"))[1]


def _generate(hub: FakeHub, tmp_path: Path, *args, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2", HF_HUB_DISABLE_XET="1")
    (tmp_path / "x.png").unlink(missing_ok=True)
    return subprocess.run([sys.executable, "-m", "quantbench.cli.main", "generate", "--model", REPO, "--prompt", "a",
                           "--width", "32", "--height", "32", "--steps", "1", "--out", str(tmp_path / "x.png"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"quantbench: error: {REPO}: "), result.stderr
    return last


def test_first_download_shows_progress_on_stderr_keeps_json_on_stdout_and_offline_asks_nothing(hub, tmp_path):
    result = _generate(hub, tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["out"] == str(tmp_path / "x.png")
    assert "Fetching" in result.stderr and (tmp_path / "x.png").exists()
    assert sorted(hub.downloads()) == sorted(hub.files)
    hub.requests.clear()
    result = _generate(hub, tmp_path, "--offline", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert hub.requests == []
    # with the network, a complete cached model is not asked for again either
    result = _generate(hub, tmp_path, "--quiet")
    assert result.returncode == 0 and hub.requests == [] and result.stderr == "", result.stderr


def test_a_download_cut_part_way_is_said_and_finished_by_the_next_run(hub, tmp_path):
    shard = _shard(hub)
    hub.drop[shard] = 1000
    line = _one_error_line(_generate(hub, tmp_path, "--quiet"))
    assert line == (f"quantbench: error: {REPO}: the download is incomplete and could not be finished (the "
                    f"connection was cut during the download); missing: {shard}; running again with the network "
                    "finishes it")
    assert not (tmp_path / "x.png").exists()
    # offline: one line naming what is missing and how to finish it
    line = _one_error_line(_generate(hub, tmp_path, "--offline"))
    assert line == (f"quantbench: error: {REPO}: only part of it is in the Hugging Face cache (an interrupted "
                    f"download or a pruned cache?); missing: {shard}; downloading with the network finishes it")
    # the Hub down: the same, and why it could not be finished
    hub.fail = (503, None)
    line = _one_error_line(_generate(hub, tmp_path))
    assert line == (f"quantbench: error: {REPO}: the download is incomplete and could not be finished (the Hub "
                    f"answered 503, a server error: try again later); missing: {shard}; running again with the "
                    "network finishes it")
    hub.fail, hub.drop = None, {}
    hub.requests.clear()
    result = _generate(hub, tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr
    assert hub.downloads() == [shard]  # only what was missing


def test_a_partial_snapshot_without_the_hubs_listing_is_not_taken_for_the_model(hub, tmp_path):
    """A cache written by an older huggingface_hub keeps no listing of the repo (trees/): a snapshot that an
    interrupted download left was taken as the model, failed to load, and was never completed."""
    hub.drop[_shard(hub)] = 1000
    _one_error_line(_generate(hub, tmp_path, "--quiet"))
    shutil.rmtree(tmp_path / "hub" / "models--acme--tiny" / "trees")
    line = _one_error_line(_generate(hub, tmp_path, "--offline"))
    assert f"missing: {_shard(hub)}; downloading with the network" in line
    hub.drop = {}
    hub.requests.clear()
    result = _generate(hub, tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr
    assert hub.downloads() == [_shard(hub)]


def test_a_component_folder_never_downloaded_is_missing_too(hub, tmp_path):
    assert _generate(hub, tmp_path, "--quiet").returncode == 0
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / COMMIT
    shutil.rmtree(snapshot / "vae")
    shutil.rmtree(tmp_path / "hub" / "models--acme--tiny" / "trees")
    line = _one_error_line(_generate(hub, tmp_path, "--offline"))
    assert "missing: vae/; downloading with the network" in line
    hub.requests.clear()
    assert _generate(hub, tmp_path, "--quiet").returncode == 0
    assert (snapshot / "vae").is_dir() and hub.downloads() == []  # linked again to the blobs it had


@pytest.mark.parametrize("fail, reason", [
    ((401, "GatedRepo"), "the repository is gated: accept its licence on the Hub and log in with `hf auth login`"),
    ((403, "GatedRepo"), "the repository is gated: accept its licence on the Hub and log in with `hf auth login`"),
    ((404, "RepoNotFound"), "no such repository, or it is private"),
    ((401, "RepoNotFound"), "no such repository, or it is private"),
    ((401, None), "the Hub refused access (401): log in with `hf auth login`"),
    ((500, None), "the Hub answered 500, a server error: try again later"),
    ((502, None), "the Hub answered 502, a server error: try again later"),
    ("hang", "the Hub did not answer in time (HF_HUB_ETAG_TIMEOUT 2 s, HF_HUB_DOWNLOAD_TIMEOUT 2 s)"),
])
def test_the_hubs_refusals_and_silence_are_one_line(hub, tmp_path, fail, reason):
    """A Hub that took the connection and never answered held `generate` forever (no timeout on the revision
    request); a server error read 'the Hub could not be reached'."""
    hub.fail = fail
    started = time.monotonic()
    line = _one_error_line(_generate(hub, tmp_path, timeout=60))
    assert line == (f"quantbench: error: {REPO}: not in the Hugging Face cache and could not be downloaded "
                    f"({reason}); missing: model_index.json and every component folder")
    assert time.monotonic() - started < 30


def test_a_corrupt_cached_model_index_or_a_ref_to_no_snapshot_is_one_line(hub, tmp_path):
    assert _generate(hub, tmp_path, "--quiet").returncode == 0
    repo = tmp_path / "hub" / "models--acme--tiny"
    index = repo / "snapshots" / COMMIT / "model_index.json"
    blob = index.resolve()
    blob.write_text("{not json")
    line = _one_error_line(_generate(hub, tmp_path, "--offline"))
    assert line == (f"quantbench: error: {REPO}: the cached model_index.json is damaged (not valid JSON); downloading "
                    "with the network replaces it")
    hub.requests.clear()
    result = _generate(hub, tmp_path, "--quiet")  # with the network it is fetched afresh
    assert result.returncode == 0, result.stderr
    assert hub.downloads() == ["model_index.json"] and json.loads(index.read_text())
    hub.fail = (503, None)
    index.resolve().write_text("{not json")
    line = _one_error_line(_generate(hub, tmp_path))
    assert line == (f"quantbench: error: {REPO}: the cached model_index.json is damaged (not valid JSON, and "
                    "downloading it again failed: the Hub answered 503, a server error: try again later); delete "
                    f"{repo} and run again")
    hub.fail = None
    blob = index.resolve()
    blob.unlink()  # the link's blob is gone too: an incomplete snapshot now, which the Hub completes
    line = _one_error_line(_generate(hub, tmp_path, "--offline"))
    assert "missing: model_index.json; downloading with the network" in line
    (repo / "refs" / "main").write_text("f" * 40)  # refs/main names a snapshot that is not there
    line = _one_error_line(_generate(hub, tmp_path, "--offline"))
    assert line == (f"quantbench: error: {REPO}: not in the Hugging Face cache and could not be downloaded "
                    "(the Hub could not be reached); missing: model_index.json and every component folder") \
        or line == f"quantbench: error: {REPO}: not in the Hugging Face cache; missing: model_index.json and every " \
                   "component folder", line
    result = _generate(hub, tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr


def test_a_quiet_download_says_nothing(hub, tmp_path):
    """--quiet is "no progress on stderr": huggingface_hub's download bars were still drawn."""
    result = _generate(hub, tmp_path, "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert sorted(hub.downloads()) == sorted(hub.files)


def _default_ctrl_c() -> None:
    """SIGINT as a terminal gives it: a process started from a background job (CI under nohup) inherits SIGINT
    ignored, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_a_download_is_said_at_once_and_the_next_run_finishes_it(hub, tmp_path):
    """Ctrl-C while a shard was being fetched waited for every file in flight to end before 'interrupted' was said
    (a large shard: minutes): it is said at once now, and the next run fetches only what is missing."""
    shard = _shard(hub)
    hub.slow[shard] = 1000  # the rest of it takes about 12 s
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2", HF_HUB_DISABLE_XET="1")
    process = subprocess.Popen([sys.executable, "-m", "quantbench.cli.main", "generate", "--model", REPO, "--prompt",
                                "a", "--width", "32", "--height", "32", "--steps", "1", "--out",
                                str(tmp_path / "x.png")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, preexec_fn=_default_ctrl_c)
    said: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: said.extend((time.monotonic(), line) for line in process.stderr))
    reader.start()
    assert hub.slowed.wait(60)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=90)
    reader.join(10)
    assert code == 130, (said, started)
    assert "Traceback" not in "".join(line for _, line in said)
    told = [when for when, line in said if line.rstrip("\n").split("\r")[-1].endswith("quantbench: interrupted")]
    assert told and told[0] - started < 5, (said, started)
    hub.slow = {}
    hub.requests.clear()
    result = _generate(hub, tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr
    assert shard in hub.downloads() and len(hub.downloads()) < len(hub.files)  # what was fetched is kept
