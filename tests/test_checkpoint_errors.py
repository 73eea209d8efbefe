"""Broken checkpoints give one-line errors naming the file, never a traceback."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fake_hub import cached_klein
from quantbench.core.checkpoint import open_component
from quantbench.core.errors import CheckpointError
from quantbench.core.random_model import write_random_model
from quantbench.core.sources import resolve_model_folder


@pytest.fixture(scope="module")
def sharded_model(tmp_path_factory):
    """A tiny random model whose transformer is split into several shards with an index."""
    return write_random_model(tmp_path_factory.mktemp("rnd") / "tiny", "tiny", max_shard_bytes=256 << 10)


def _copy(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "copy"))


def _shards(folder: Path) -> list[Path]:
    return sorted((folder / "transformer").glob("*.safetensors"))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "quantbench.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_random_model_is_sharded_with_an_index(sharded_model):
    assert len(_shards(sharded_model)) > 1
    index = json.loads((sharded_model / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in _shards(sharded_model)}


def test_truncated_shard_is_named(sharded_model, tmp_path):
    folder = _copy(sharded_model, tmp_path)
    shard = _shards(folder)[1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated safetensors file \(1000 bytes missing\)"):
        open_component(folder / "transformer")


def test_shard_listed_but_absent(sharded_model, tmp_path):
    folder = _copy(sharded_model, tmp_path)
    missing = _shards(folder)[0]
    missing.unlink()
    with pytest.raises(CheckpointError, match=f"listed in .* but absent: {missing.name}"):
        open_component(folder / "transformer")


def test_cli_reports_a_truncated_checkpoint_in_one_line_and_writes_nothing(sharded_model, tmp_path):
    folder = _copy(sharded_model, tmp_path)
    sorted((folder / "vae").glob("*.safetensors"))[0].write_bytes(b"\x10\x00")
    out = tmp_path / "x.png"
    result = _cli("generate", "--model", str(folder), "--prompt", "a star", "--width", "32", "--height", "32",
                  "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("quantbench: error: ")
    assert "truncated safetensors file" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_not_a_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a diffusers model folder"):
        resolve_model_folder(tmp_path)


@pytest.mark.parametrize("model", ["my models/flux klein", "[/]", "owner/-name", "a/b..c"])
def test_a_missing_path_that_is_no_repo_id_either_is_one_line(tmp_path, model):
    """huggingface_hub's HFValidationError was a traceback: a mistyped folder with a space took that road."""
    result = _cli("generate", "--model", model, "--prompt", "x", "--out", str(tmp_path / "x.png"),
                  env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"quantbench: error: {model}: no such folder, not a model quantbench knows (quantbench recommend lists "
        "them) and not a Hugging Face repo id (owner/name)"]


def test_repo_id_from_the_hugging_face_cache(sharded_model, tmp_path):
    """A repo id resolves through huggingface_hub's cache layout (refs/main -> snapshots/<rev>)."""
    repo = tmp_path / "hub" / "models--acme--tiny-klein"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(sharded_model, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    out = tmp_path / "cached.png"
    result = _cli("generate", "--model", "acme/tiny-klein", "--prompt", "a star", "--width", "32", "--height", "32",
                  "--out", str(out), "--offline", "--quiet", env={"HF_HUB_CACHE": str(tmp_path / "hub"),
                                                                "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert out.exists()


def test_a_model_named_as_recommend_names_it_loads_its_repo_from_the_cache(tmp_path):
    """`recommend` calls models klein-4b, z-image-turbo...: generate takes those names for their repos."""
    cached_klein(tmp_path / "hub")
    out = tmp_path / "klein.png"
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = _cli("generate", "--model", "Klein-4B", "--prompt", "a star", "--width", "32", "--height", "32",
                  "--steps", "1", "--out", str(out), "--offline", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert out.exists() and json.loads(result.stdout)["model"] == "Klein-4B"
    absent = _cli("generate", "--model", "z-image-turbo", "--prompt", "x", "--out", str(tmp_path / "z.png"), env=env)
    assert absent.returncode == 2
    assert absent.stderr.strip().splitlines()[-1].startswith(
        "quantbench: error: Tongyi-MAI/Z-Image-Turbo: not in the Hugging Face cache")


def test_repo_not_cached_and_no_network_says_which_repo_and_what_is_missing(tmp_path):
    result = _cli("generate", "--model", "acme/never-downloaded", "--prompt", "x", "--out", str(tmp_path / "x.png"),
                  env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == ("quantbench: error: acme/never-downloaded: not in the Hugging Face cache and could not "
                         "be downloaded (HF_HUB_OFFLINE is set); missing: model_index.json and every component folder")
    assert "Traceback" not in result.stderr


def test_a_cache_snapshot_whose_blobs_are_gone_names_the_broken_link(sharded_model, tmp_path):
    """In the Hugging Face cache layout every file of a snapshot is a link into blobs/: an interrupted download or a
    pruned cache leaves links to nothing, which said 'cannot be read (No such file or directory)' or 'shard(s) ...
    absent' of a file `ls` shows there. The snapshot is incomplete: the line names the file and what to do (with the
    network the download fetches it again, tests/test_hub_downloads.py)."""
    repo = tmp_path / "hub" / "models--acme--tiny-klein"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot, blobs = repo / "snapshots" / revision, repo / "blobs"
    blobs.mkdir(parents=True)
    for file in sorted(sharded_model.rglob("*")):
        if file.is_file():
            blob = blobs / f"{len(list(blobs.iterdir())):04d}"
            shutil.copyfile(file, blob)
            (snapshot / file.relative_to(sharded_model)).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, (snapshot / file.relative_to(sharded_model)).parent),
                       snapshot / file.relative_to(sharded_model))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    for gone in (_shards(snapshot)[1], snapshot / "text_encoder" / "config.json"):
        gone.resolve().unlink()
        result = _cli("generate", "--model", "acme/tiny-klein", "--prompt", "a star", "--width", "32", "--height", "32",
                      "--out", str(tmp_path / "x.png"), "--offline", "--quiet", env=env)
        assert result.returncode == 2 and not (tmp_path / "x.png").exists()
        assert result.stderr == ("quantbench: error: acme/tiny-klein: only part of it is in the Hugging Face cache (an "
                                 "interrupted download or a pruned cache?); missing: "
                                 f"{gone.relative_to(snapshot)}; downloading with the network finishes it\n"), \
            result.stderr
        shutil.copyfile(_shards(sharded_model)[1] if gone.suffix == ".safetensors"
                        else sharded_model / "text_encoder" / "config.json", gone.resolve())
