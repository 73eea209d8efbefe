"""Which family runs a folder is decided once while its files stay as they were: one plan asked four times (defaults,
validation, the pipeline class, the transformer's structure), and each time read model_index.json and every
component's config.json. An edited file is read again on the next call."""

import collections
import json
import os
import time
from pathlib import Path

import pytest

from quantbench.core import families, model_files
from quantbench.core.errors import CheckpointError
from quantbench.core.generate import plan_generation
from quantbench.core.generation import GenerationSettings
from quantbench.core.random_model import write_random_model


def _settle(folder: Path, hours: float = 1.0) -> None:
    """As a model downloaded a while ago: its settings files last modified `hours` back (one modified in the last two
    seconds is read on every call: the file system's clock may not have ticked since)."""
    then = time.time() - 3600 * hours
    for path in folder.rglob("*.json"):
        os.utime(path, (then, then))


@pytest.fixture
def folder(tmp_path):
    folder = write_random_model(tmp_path / "tiny", "tiny")
    _settle(folder)
    return folder


@pytest.fixture
def reads(monkeypatch):
    """{file: times it was read}: model_index.json by the family decision, each config.json by any reader (the family
    decision and the components' readers share one read, model_files.config_memo)."""
    counted = collections.Counter()
    read_json, read_index = model_files.read_json_object, families.read_model_index

    def counting_json(path):
        if Path(path).name == "config.json":
            counted[Path(path)] += 1
        return read_json(path)

    def counting_index(folder):
        counted[Path(folder) / "model_index.json"] += 1
        return read_index(folder)

    monkeypatch.setattr(model_files, "read_json_object", counting_json)
    monkeypatch.setattr(families, "read_model_index", counting_index)
    return counted


def _plan(folder: Path):
    return plan_generation(GenerationSettings(model=str(folder), prompt="a red star", width=64, height=64, steps=1))


def _settings_files(folder: Path) -> set[Path]:
    index = json.loads((folder / "model_index.json").read_text())
    return {folder / "model_index.json"} | {folder / name / "config.json" for name, entry in index.items()
                                            if isinstance(entry, list) and entry[0] == "diffusers"}


def test_one_plan_reads_each_settings_file_once_and_the_next_none(folder, reads):
    _plan(folder)
    assert set(reads) >= _settings_files(folder) and set(reads.values()) == {1}  # it was 4 each
    _plan(folder)
    assert set(reads.values()) == {1}  # unchanged files: only stat'ed


def test_an_edited_config_is_seen_on_the_next_call(folder, reads):
    config = folder / "transformer" / "config.json"
    original = config.read_text()
    _plan(folder)
    config.write_text(original.replace('"Flux2Transformer2DModel"', '"ZImageTransformer2DModel"'))
    _settle(folder, hours=2)  # not just modified: the cache is asked, and tells the edit by its signature
    with pytest.raises(CheckpointError, match="a ZImageTransformer2DModel, but model_index.json names "
                                              "Flux2Transformer2DModel for the transformer"):
        _plan(folder)
    config.write_text(original)  # put back, and just modified: read again
    assert _plan(folder).folder == folder


def test_a_folder_being_written_is_read_each_time(tmp_path, reads):
    """Its files' modification times may not have moved between two writes in one tick of the file system's clock."""
    folder = write_random_model(tmp_path / "tiny", "tiny")
    for _ in range(2):
        families.family_for_folder(folder)
    assert reads[folder / "model_index.json"] == 2


@pytest.fixture
def opened(monkeypatch):
    """{file: times any reader opened it} (Python's open, io.open and os.open)."""
    import builtins
    import io

    counted = collections.Counter()
    real_open, real_os_open = builtins.open, os.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            counted[Path(file)] += 1
        return real_open(file, *args, **kwargs)

    def counting_os_open(path, *args, **kwargs):
        counted[Path(path)] += 1
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(os, "open", counting_os_open)
    return counted


def test_one_run_reads_the_transformers_config_index_and_headers_once_and_sees_an_edit(tmp_path, opened):
    """A plan and its fit check (the VAE tile, the text encoder's precision, the fit) opened the transformer's
    config.json, its safetensors index and every shard's header 8 times each (the text encoder's 10): each reader
    opened the component again. Now once, and not at all while the files stay as they were; an edited config, or
    a shard cut short, is read again on the next call and refused in one line naming it."""
    from quantbench.core.generate import ModelSlot, prepare_run
    from quantbench.core.pipeline_base import MemoryOptions

    folder = write_random_model(tmp_path / "tiny", "tiny", max_shard_bytes=20_000)
    then = time.time() - 3600
    for path in folder.rglob("*"):
        os.utime(path, (then, then))
    transformer = folder / "transformer"

    def run() -> dict:
        opened.clear()
        plan = plan_generation(GenerationSettings(model=str(folder), prompt="a red star", width=64, height=64, steps=1,
                                                  quantize="4"))
        prepare_run(plan, MemoryOptions(fit_vae_tile=True), ModelSlot())
        return {path.name: count for path, count in opened.items() if path.parent == transformer}

    files = sorted(transformer.iterdir())
    assert len([f for f in files if f.suffix == ".safetensors"]) > 2 and any(f.name.endswith(".index.json") for f in files)
    assert run() == {f.name: 1 for f in files}
    assert run() == {}
    config = transformer / "config.json"
    config.write_text(config.read_text().replace('"num_layers": 1', '"num_layers": -1'))
    with pytest.raises(CheckpointError, match="num_layers"):
        run()
    shard = next(f for f in files if f.suffix == ".safetensors")
    with open(shard, "r+b") as data:
        data.truncate(shard.stat().st_size - 1)
    config.write_text(config.read_text().replace('"num_layers": -1', '"num_layers": 1'))
    with pytest.raises(CheckpointError, match=f"{shard.name}: .*truncated|{shard.name}.*past the end"):
        run()


def test_one_generation_reads_model_index_once_and_sees_an_edit(tmp_path, opened):
    """One generation opened model_index.json 13 times (the family decision, the family's defaults twice, the native
    size, the catalog entry of each fit check, the load): now once, then not at all while it stays as it was. An
    edited model_index.json is read on the next call (a bad default refused in one line naming it)."""
    from quantbench.core.generate import ModelSlot, generate_image

    folder = write_random_model(tmp_path / "tiny", "tiny")
    _settle(folder)
    index = folder / "model_index.json"
    settings = GenerationSettings(model=str(folder), prompt="a red star", width=64, height=64, steps=1)
    opened.clear()
    generate_image(settings, out=tmp_path / "one.png", slot=ModelSlot())
    assert opened[index] == 1  # it was 13
    opened.clear()
    assert _plan(folder).settings.steps == 1 and opened[index] == 0  # unchanged: only stat'ed
    index.write_text(index.read_text().replace("{", '{"default_steps": 0, ', 1))
    _settle(folder, hours=2)  # not just modified: the memo is asked, and tells the edit by its signature
    opened.clear()
    with pytest.raises(CheckpointError, match="model_index.json: default_steps 0 is not a whole number"):
        _plan(folder)
    assert opened[index] == 1
