"""The built-in models: the procedural world they draw, its captions, and the analyser that scores pictures of it.

The models themselves, `demo` (base: true CFG, negative prompts, 20 steps) and `demo-turbo`
(distilled from it: 4 steps, guidance baked in), ship as diffusers-layout folders under `models/`,
trained by `training/train_demo.py`. `builtin_model_path` finds them; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

BUILTIN_MODELS = ("demo", "demo-turbo")
DEFAULT_MODEL = "demo"
EXAMPLE_PROMPT = "a small red star on the left over a striped blue background"  # a scene they were trained on
MODELS_FOLDER = Path(__file__).resolve().parent / "models"


def is_builtin_model(name: str | Path) -> bool:
    return isinstance(name, str) and name in BUILTIN_MODELS


def builtin_model_path(name: str) -> Path:
    """The folder of a built-in model ("demo" or "demo-turbo"); CheckpointError in one line otherwise."""
    if name not in BUILTIN_MODELS:
        raise CheckpointError(f"unknown built-in model '{name}': choose {' or '.join(BUILTIN_MODELS)}")
    folder = MODELS_FOLDER / name
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(f"built-in model '{name}' is missing from this installation ({folder}); "
                              "rebuild it with training/train_demo.py")
    return folder
