"""Our themes live as TOML files in the themes/ folder (installed as quantbench.themes)."""

from __future__ import annotations

import tomllib
from importlib import resources

from textual.theme import Theme

_COLOURS = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel", "success",
            "warning", "error")


def load_themes() -> list[Theme]:
    themes = []
    for entry in sorted(resources.files("quantbench.themes").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
            themes.append(Theme(name=data["name"], dark=bool(data.get("dark", True)),
                                variables=dict(data.get("variables", {})),
                                **{k: data[k] for k in _COLOURS if k in data}))
    return themes
