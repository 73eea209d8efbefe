"""Finding the model a lab command names: a folder, a repo id, or a built-in model's name."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..sources import resolve_model_folder, user_path

BUILTIN_NAMES = ("demo", "demo-turbo")
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin" / "models"


def builtin_folder(name: str) -> Path:
    return BUILTIN_DIR / name


def builtin_available(name: str) -> bool:
    return (builtin_folder(name) / "model_index.json").is_file()


def resolve_lab_model(source: str | Path, allow_download: bool = False) -> Path:
    """The model folder for `source`: an existing path, a built-in name, or a repo id in the cache."""
    text = str(source)
    if not user_path(text).exists() and text in BUILTIN_NAMES:
        if not builtin_available(text):
            raise CheckpointError(f"{text}: the built-in model is not shipped yet (no {builtin_folder(text)})")
        return builtin_folder(text)
    return resolve_model_folder(source, allow_download=allow_download)


def is_builtin(source: str | Path, folder: Path | None = None) -> bool:
    """Whether this is one of our built-in models (whose pictures the attribute analyser can read)."""
    if str(source) in BUILTIN_NAMES:
        return True
    if folder is None:
        return False
    try:
        return Path(folder).resolve().parent == BUILTIN_DIR
    except OSError:
        return False
