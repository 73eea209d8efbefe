"""The README's layout section names every part of the engine, the CLI and the workbench as the tree has them:
a module or folder added (or renamed) without a line there fails here, as does a line naming one that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def tree(folder: str) -> set[str]:
    """The modules and packages directly in `folder` ('catalog/', 'fit.py'), __init__.py apart."""
    base = ROOT / folder
    modules = {p.name for p in base.glob("*.py") if p.name != "__init__.py"}
    packages = {f"{p.name}/" for p in base.iterdir() if (p / "__init__.py").is_file()}
    return modules | packages


def named(block: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_][\w]*(?:\.py|/)", block))


def test_the_layout_names_every_engine_module_and_package():
    assert sorted(tree("core") - named(layout_block())) == []


def test_the_layout_names_every_workbench_module():
    assert sorted(tree("tui") - named(layout_block())) == []


def test_every_engine_module_the_layout_names_exists():
    block = layout_block()
    core = block.split("\ncli/", 1)[0]  # the core/ part of the block
    mentioned = {name for name in named(core) if name.endswith(".py") and "/" not in name}
    nested = {p.name for p in (ROOT / "core").rglob("*.py")} | {"train_demo.py"}
    assert sorted(mentioned - nested) == []
