"""The models quantbench knows about, declared in one place.

Each entry lists its components (transformer, text encoder(s), VAE) with the architecture numbers
that size them, copied from the published configs (each repository's `*/config.json`; the figures are
collected in the project's reference notes on models). Parameter counts and bytes are *derived* from
these configs by `memory_model`, which builds each component with its family's own modules (the entry's
`family`, a registered family in core/families); the published figures are kept next to them
(`published_params`) so that the derivation is checked, not trusted.

`memory_model.entry_facts(entry)` adds what is derived: parameters per component (in the repository
and as loaded) and their download size.

- entry.py: what an entry says (CatalogEntry, Component, precisions);
- architectures.py: the published config numbers of each component;
- known_models.py: the entries. Adding a model: append a `CatalogEntry` to its DECLARED;
- local_folders.py: entries read from folders on disk. The built-in models (`demo`, `demo-turbo`) are
  declared without components; in an installation that ships their folders (core/builtin/models),
  `shipped_builtin` describes each from its own folder and marks it shipped and runnable. Entries that
  are not shipped are listed by recommendations as "not yet shipped".
"""

from __future__ import annotations

from ..errors import InvalidRequest
from .entry import CatalogEntry, Component, Precision, precision_label
from .known_models import DECLARED
from .local_folders import entry_from_folder, shipped_builtin

__all__ = ["ENTRIES", "CatalogEntry", "Component", "Precision", "all_entries", "entry_from_folder", "find_entry",
           "get_entry", "precision_label", "shipped_builtin"]

ENTRIES: tuple[CatalogEntry, ...] = tuple(shipped_builtin(e) for e in DECLARED)


def all_entries(shipped_only: bool = False) -> tuple[CatalogEntry, ...]:
    return tuple(e for e in ENTRIES if e.shipped or not shipped_only)


def find_entry(name_or_repo: str) -> CatalogEntry | None:
    """The entry whose id or repository id is `name_or_repo` (case-insensitive), or None."""
    key = name_or_repo.strip().lower()
    for entry in ENTRIES:
        if key == entry.id or (entry.repo is not None and key == entry.repo.lower()):
            return entry
    return None


def get_entry(name: str) -> CatalogEntry:
    entry = find_entry(name)
    if entry is None:
        raise InvalidRequest(f"unknown model '{name}': choose one of {', '.join(e.id for e in ENTRIES)}")
    return entry
