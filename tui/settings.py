"""Where the workbench keeps things: settings in the user's config dir, images and history in the data dir."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from platformdirs import user_config_dir, user_data_dir

APP_NAME = "quantbench"


def config_dir() -> Path:
    return Path(os.environ.get("QUANTBENCH_CONFIG_DIR") or user_config_dir(APP_NAME))


def data_dir() -> Path:
    return Path(os.environ.get("QUANTBENCH_DATA_DIR") or user_data_dir(APP_NAME))


@dataclass
class Settings:
    theme: str = "quantbench-dark"
    model: str = "demo"

    @classmethod
    def load(cls) -> "Settings":
        path = config_dir() / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and isinstance(v, str)})

    def save(self) -> None:
        folder = config_dir()
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".config.", suffix=".json.part")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, folder / "config.json")
