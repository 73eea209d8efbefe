"""Where a model's files are: a built-in model, a local diffusers-layout folder, or a Hugging Face repo in the cache."""

from __future__ import annotations

import json
from pathlib import Path

from .builtin import builtin_model_path, is_builtin_model
from .errors import CheckpointError
from .model_files import present
from .model_files import read_model_index  # noqa: F401 (model_index.json, checked; callers import it from here)

COMPONENT_PATTERNS = ["model_index.json", "*/config.json", "*/*.json", "*/*.safetensors", "*/*.jinja",
                      "*/*.txt", "scheduler/*"]


def looks_like_repo_id(source: str) -> bool:
    """owner/name as the Hub names repositories (a path with a space, "my models/flux", is not one)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    parts = source.split("/")
    if not (len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def resolve_model_folder(source: str | Path, allow_download: bool = True) -> Path:
    """A folder holding model_index.json: a built-in model's name ("demo", "demo-turbo"), a local
    path, or a repo id (cache first, then the Hub)."""
    if is_builtin_model(source):
        return builtin_model_path(source)
    path = Path(source).expanduser()
    if path.exists():
        if not present(path / "model_index.json"):
            raise CheckpointError(f"{path}: not a diffusers model folder (no model_index.json)")
        return path
    if not looks_like_repo_id(str(source)):
        raise CheckpointError(f"{source}: no such folder, and not a Hugging Face repo id (owner/name)")
    return _from_hub(str(source), allow_download)


def _from_hub(repo_id: str, allow_download: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=COMPONENT_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if allow_download:
        try:
            return Path(snapshot_download(repo_id, allow_patterns=COMPONENT_PATTERNS))
        except Exception as exc:  # network errors come in many classes; the reason is what matters
            raise CheckpointError(
                f"{repo_id}: not in the Hugging Face cache and could not be downloaded ({_download_failure(exc)}); "
                f"missing: {', '.join(_missing_files(repo_id))}") from None
    raise NotDownloaded(f"{repo_id}: not in the Hugging Face cache; missing: {', '.join(_missing_files(repo_id))}")


class NotDownloaded(CheckpointError):
    """A repo id that is not in the cache, where downloading was not allowed (--offline, the workbench)."""


def _download_failure(exc: Exception) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        return "the repository is gated: accept its licence on the Hub and log in with `hf auth login`"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repository, or it is private"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return "the Hub could not be reached"


def _missing_files(repo_id: str) -> list[str]:
    """Which of the expected files the cache lacks (all of them when the repo was never cached)."""
    from huggingface_hub import try_to_load_from_cache

    cached_index = try_to_load_from_cache(repo_id, "model_index.json")
    if not isinstance(cached_index, str):
        return ["model_index.json and every component folder"]
    components = [k for k, v in json.loads(Path(cached_index).read_text()).items()
                  if isinstance(v, list) and not k.startswith("_")]
    root = Path(cached_index).parent
    return [f"{c}/" for c in components if not (root / c).is_dir()] or ["some weight shards"]
