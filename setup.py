"""Packages are found, not listed: every folder with an __init__.py under core/, tui/, cli/ and themes/ is
installed under the `quantbench` namespace (core/ as quantbench.core, ...), so that no top-level `core` or
`tui` module is ever installed and a new folder needs no entry anywhere. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

ROOTS = ("core", "tui", "cli", "themes")

setup(
    package_dir={f"quantbench.{root}": root for root in ROOTS},
    packages=[f"quantbench.{package}" for package in find_packages(include=[f"{root}*" for root in ROOTS])],
)
