"""Plans an `auto:` search found, kept between runs.

A search takes minutes even on the built-in demo model, and what it finds depends only on the model's files, the
budget, the compute dtype, the text encoder layers, the calibration prompts, the probe's settings and quantbench's
version. So `generate`, `save`, `compare` and the workbench's Compare view keep each plan they search, and a later
run asking for the same thing on the same files reads it back and says so, instead of searching again.

Plans are kept under the user's cache folder (`~/.cache/quantbench/plans` on Linux, `~/Library/Caches/quantbench/
plans` on macOS); QUANTBENCH_PLAN_CACHE names another folder, or `off` keeps none. A model file that changes (its
size or modification time) makes a new key, so an edited model is searched again. A kept plan that cannot be read
or no longer fits the model is searched again and replaced; a cache folder that cannot be written keeps nothing and
stops nothing. The newest MAX_KEPT plans are kept. A job of several ranks (mlx.launch) neither reads nor keeps them:
its ranks search together, and one that found a plan kept on its host would leave the others waiting.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from platformdirs import user_cache_dir

from .. import __version__
from ..distributed import known_world
from ..errors import InvalidRequest
from ..generation import default_compute_dtype
from ..lora_request import lora_requests
from ..quant.calibration.settings import prompts_digest, read_prompt_file
from .budgets import Budget
from .plans import QuantPlan, check_plan_layers, load_plan
from .structure import transformer_structure

FOLDER_ENV = "QUANTBENCH_PLAN_CACHE"
MAX_KEPT = 64
KEY_FORMAT = 1


def cache_folder() -> Path | None:
    """Where plans are kept, or None when QUANTBENCH_PLAN_CACHE is `off` or in a job of several ranks."""
    job = known_world()
    if job is not None and job.size > 1:
        return None  # the ranks search together: one rank reading a kept plan would leave the others waiting
    given = os.environ.get(FOLDER_ENV, "").strip()
    if given.lower() == "off":
        return None
    return Path(given) if given else Path(user_cache_dir("quantbench")) / "plans"


def _files_of(folder: Path) -> list[tuple[str, int, int]]:
    """Each file under the model folder: its path within it, size and modification time (symlinks followed: the
    Hugging Face cache links a snapshot's files to its blobs). Hidden names (our staging files) are left out. A
    single-file checkpoint is its own one file."""
    if folder.is_file():
        info = folder.stat()
        return [(folder.name, info.st_size, info.st_mtime_ns)]
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root, name)
            try:
                info = path.stat()
            except OSError:
                continue
            found.append((str(path.relative_to(folder)), info.st_size, info.st_mtime_ns))
    return found


def _prompts_digest(calibration) -> str | None:
    """What the calibration prompts were, when the caller chose them (None: the model's own), as a saved model
    records them: an edit that leaves the prompts as they were (a comment, a blank line) is the same request."""
    if calibration is None:
        return None
    if calibration.prompts:
        return prompts_digest(calibration.prompts)
    if calibration.prompts_file is not None:
        try:
            return prompts_digest(read_prompt_file(calibration.prompts_file))
        except InvalidRequest:
            return "unreadable"  # refused before any search; never the key of the model's own prompts
    return None


def plan_key(folder: Path, budget: Budget, *, dtype=None, text_encoder_layers=None, calibration=None,
             probe: dict | None = None, loras=()) -> str:
    """What names a search's request: the model's files and everything the search was asked (`probe`: the probe's
    settings where the caller chose them, as compare does; `loras`: those fused into the model searched, each
    file as it is now)."""
    material = {
        "format": KEY_FORMAT, "version": __version__, "folder": str(Path(folder).resolve()),
        "files": _files_of(Path(folder)), "budget": [budget.kind, budget.value, budget.method, budget.group_size],
        "dtype": str(dtype or default_compute_dtype()),  # save's none is generate's auto: what loads
        "text_encoder_layers": list(text_encoder_layers) if text_encoder_layers else None,
        "calibration_prompts": _prompts_digest(calibration),
        "calibration_size": getattr(calibration, "size", None),
        "probe": probe,
        **({"loras": [lora.identity() for lora in lora_requests(loras)]} if loras else {}),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def kept_or_searched(folder: Path, key: str, search: Callable[[], QuantPlan], say: Callable[[str], None],
                     text: str) -> QuantPlan:
    """The plan kept under `key`, said as such; or `search()`'s, then kept."""
    if (kept := kept_plan(folder, key)) is not None:
        plan, path = kept
        say(f"{text}: {plan.label}, average {plan.average_bits:.2f} bits: the plan an earlier run searched for this "
            f"model, kept in {path} (delete it to search again)")
        return plan
    plan = search()
    keep_plan(plan, key, note=lambda message: say(f"{text}: {message}"))
    return plan


def kept_plan(folder: Path, key: str) -> tuple[QuantPlan, Path] | None:
    """The plan kept under `key`, if there is one that still fits the model's transformer."""
    where = cache_folder()
    if where is None:
        return None
    path = where / f"{key}.json"
    if not path.is_file():
        return None
    try:
        plan = load_plan(path)
        check_plan_layers(plan, transformer_structure(folder), source=str(path))
    except InvalidRequest:
        return None
    return plan, path


def keep_plan(plan: QuantPlan, key: str, note: Callable[[str], None] | None = None) -> Path | None:
    """Keep `plan` under `key` (atomically); a cache that cannot be written keeps nothing and says so."""
    where = cache_folder()
    if where is None:
        return None
    try:
        where.mkdir(parents=True, exist_ok=True)
        path = plan.save(where / f"{key}.json", overwrite=True)
        _forget_oldest(where)
    except (OSError, InvalidRequest) as error:
        if note:
            note(f"the plan could not be kept for next time ({error})")
        return None
    return path


def _forget_oldest(where: Path) -> None:
    kept = []
    for path in where.glob("*.json"):
        try:
            kept.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue
    for _, path in sorted(kept, reverse=True)[MAX_KEPT:]:
        path.unlink(missing_ok=True)
