"""Where the workbench keeps things: settings in the user's config dir, images and history in the data dir."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from platformdirs import user_config_dir, user_data_dir

from quantbench.core.atomic import os_error_reason, replace_file, set_aside
from quantbench.core.json_text import parse_json, read_regular_file

APP_NAME = "quantbench"


def config_dir() -> Path:
    return Path(os.environ.get("QUANTBENCH_CONFIG_DIR") or user_config_dir(APP_NAME))


def data_dir() -> Path:
    return Path(os.environ.get("QUANTBENCH_DATA_DIR") or user_data_dir(APP_NAME))


def unsaved(what: str, exc: OSError) -> str:
    """One plain line for a file the workbench could not write: "settings not saved: /x/config: File exists"."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{what} not saved: {where}{os_error_reason(exc)}"


@dataclass
class Settings:
    theme: str = "quantbench-dark"
    model: str = "demo"

    @classmethod
    def path(cls) -> Path:
        return config_dir() / "config.json"

    @classmethod
    def load(cls) -> tuple["Settings", str | None]:
        """(the saved settings, or the defaults for what is missing or broken; what was wrong, or None).

        A file that is not a JSON object is moved to config.json.bad and the defaults are used; a setting
        of the wrong type is dropped (the next save writes the file afresh)."""
        path = cls.path()
        try:
            data = parse_json(read_regular_file(path).decode("utf-8"))
        except FileNotFoundError:
            return cls(), None
        except OSError as exc:
            return cls(), f"settings: cannot read {path} ({exc.strerror or exc}); using the defaults"
        except ValueError:  # not UTF-8, or not JSON
            data = None
        if not isinstance(data, dict):
            return cls(), f"settings: {path} was not a JSON object; {_set_aside(path)}"
        known = {f.name for f in fields(cls)}
        wrong = sorted(k for k in known if k in data and not isinstance(data[k], str))
        settings = cls(**{k: v for k, v in data.items() if k in known and isinstance(v, str)})
        problem = f"settings: ignored {', '.join(wrong)} in {path} (not text)" if wrong else None
        return settings, problem

    def save(self) -> None:
        replace_file(self.path(), json.dumps(asdict(self), indent=2).encode("utf-8"))


def _set_aside(path: Path) -> str:
    """A broken config.json moved to config.json.bad (.bad.2, ... when an earlier one is there: a second broken file
    replaced the first one set aside)."""
    try:
        aside = set_aside(path)
    except OSError:
        return "using the defaults"
    return f"reset to the defaults (the old file is {aside.name})"
