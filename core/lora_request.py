"""A LoRA as the user asks for it (`--lora FILE[:STRENGTH]`, the workbench's LoRA field, a history record): which
file, at which strength. Reading and fusing it is core/lora.py's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidRequest, printable
from .file_memo import signature
from .numbers import decimal
from .sources import cached_snapshot, looks_like_repo_id, user_path

MAX_STRENGTH = 10.0


@dataclass(frozen=True)
class LoraRequest:
    """A LoRA as the user asks for it: its file and its strength."""

    path: Path
    strength: float = 1.0

    @property
    def option(self) -> str:
        """As --lora and the workbench's field take it: FILE, or FILE:STRENGTH."""
        return str(self.path) + (f":{self.strength:g}" if self.strength != 1.0 else "")

    def identity(self) -> tuple:
        """What tells this LoRA apart from another, or from the same file since changed."""
        try:
            file = lora_file(self.path)
        except InvalidRequest:
            return str(self.path), None, self.strength
        return str(file.resolve()), signature(file), self.strength

    def to_record(self) -> list:
        return [str(self.path if hub_lora(self.path) else self.path.absolute()), self.strength]


def parse_lora_option(text: str) -> LoraRequest:
    """`FILE[:STRENGTH]` as the --lora option and the workbench take it: a .safetensors file or a folder holding
    one, and a strength from -10 to 10 (1 when not given)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("--lora is empty: give a LoRA file, FILE or FILE:STRENGTH")
    path, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            strength = decimal(tail)
            path = head
        except ValueError:
            if not os.path.exists(text):  # "style.safetensors:strong" is a mistyped strength, not a file name
                raise InvalidRequest(f"LoRA strength '{printable(tail)}' is not a number (FILE:STRENGTH, e.g. "
                                     "style.safetensors:0.8)") from None
    return LoraRequest(user_path(path), check_strength(strength))


def check_strength(strength: float) -> float:
    if not -MAX_STRENGTH <= strength <= MAX_STRENGTH:  # NaN too
        raise InvalidRequest(f"LoRA strength {strength:g} is not allowed: use a number from {-MAX_STRENGTH:g} to "
                             f"{MAX_STRENGTH:g}")
    return float(strength)


def lora_requests(values) -> tuple[LoraRequest, ...]:
    """Requests from what a record or a caller holds: LoraRequests, [path, strength] pairs or FILE[:STRENGTH]."""
    found = []
    for value in values or ():
        if isinstance(value, LoraRequest):
            found.append(value)
        elif isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str) \
                and isinstance(value[1], (int, float)) and not isinstance(value[1], bool):
            found.append(LoraRequest(user_path(value[0]), check_strength(value[1])))
        elif isinstance(value, str):
            found.append(parse_lora_option(value))
        else:
            raise InvalidRequest(f"a LoRA is given as {printable(repr(value))[:60]}; expected FILE[:STRENGTH]")
    return tuple(found)


def hub_lora(path: Path) -> tuple[str, str | None] | None:
    """(repo id, file or None) when `path`, not on disk, names a LoRA on the Hugging Face Hub: owner/name, or
    owner/name/FILE.safetensors for one of several in the repository."""
    text = str(path)
    if user_path(text).exists():
        return None
    parts = text.split("/")
    if len(parts) > 2 and text.endswith(".safetensors") and looks_like_repo_id("/".join(parts[:2])):
        return "/".join(parts[:2]), "/".join(parts[2:])
    return (text, None) if looks_like_repo_id(text) else None


def lora_file(path: Path) -> Path:
    """The safetensors file a LoRA path names: the file itself, or the one in a folder (diffusers'
    pytorch_lora_weights.safetensors first); a LoRA on the Hub (hub_lora) as the Hugging Face cache holds it."""
    path = Path(path)
    if (hub := hub_lora(path)) is not None:
        path = _cached(*hub)
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        preferred = [p for p in found if p.name == "pytorch_lora_weights.safetensors"]
        if preferred or len(found) == 1:
            return (preferred or found)[0]
        raise InvalidRequest(f"{path}: " + ("no .safetensors file in this folder" if not found else
                                            f"{len(found)} .safetensors files in this folder: name one"))
    if not path.exists():
        raise InvalidRequest(f"{path}: no such LoRA file")
    if path.suffix != ".safetensors":
        raise InvalidRequest(f"{path}: LoRAs are read from .safetensors files only (a pickled .bin or .pt file can "
                             "run code when loaded)")
    return path


def cached_hub_lora(repo_id: str, file: str | None) -> Path | None:
    """Where the Hugging Face cache holds a LoRA on the Hub: the named file, or the snapshot folder when it holds a
    .safetensors file at its top; None when it does not."""
    snapshot = cached_snapshot(repo_id)
    if snapshot is None:
        return None
    if file is not None:
        return snapshot / file if (snapshot / file).is_file() else None
    return snapshot if any(snapshot.glob("*.safetensors")) else None


def _cached(repo_id: str, file: str | None) -> Path:
    found = cached_hub_lora(repo_id, file)
    if found is None:
        named = repo_id + (f"/{file}" if file else "")
        raise InvalidRequest(f"{named}: a LoRA not in the Hugging Face cache: quantbench download --lora {named} "
                             "fetches it (as generate, save and compare do, unless --offline)")
    return found

