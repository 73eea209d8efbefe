"""Which family runs a folder is decided once while its files stay as they were: one plan asked four times (defaults,
validation, the pipeline class, the transformer's structure), and each time read model_index.json and every
component's config.json. An edited file is read again on the next call."""

import collections
import json
import os
import time
from pathlib import Path

import pytest

from quantbench.core import families
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
    """{file: times the family decision read it}."""
    counted = collections.Counter()
    read_file, read_index = families.read_regular_file, families.read_model_index

    def counting_file(path):
        counted[Path(path)] += 1
        return read_file(path)

    def counting_index(folder):
        counted[Path(folder) / "model_index.json"] += 1
        return read_index(folder)

    monkeypatch.setattr(families, "read_regular_file", counting_file)
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
    assert reads == {path: 1 for path in _settings_files(folder)}  # it was 4 each
    _plan(folder)
    assert sum(reads.values()) == len(_settings_files(folder))  # unchanged files: only stat'ed


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
