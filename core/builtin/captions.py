"""Captions of the built-in models' world (world.py): a scene said in plain English, and read back.

`caption` writes one of a few sentence shapes for a scene; `parse_caption` reads any of them (and small
variations: "grey", "centre", "big") back into the scene, refusing words outside the world.
"""

from __future__ import annotations

import re

from .world import BACKGROUND_TONES, COLOURS, GRADIENTS, SHAPES, SIZES, Scene, is_legible

_WHERE = {
    "left": "on the left",
    "right": "on the right",
    "center": "in the center",
    "top": "at the top",
    "bottom": "at the bottom",
}
PHRASINGS = 3  # caption(scene, phrasing) accepts 0 .. PHRASINGS - 1


def caption(scene: Scene, phrasing: int = 0) -> str:
    """The scene in plain English, e.g. "a small red star on the left over a striped blue background".

    `phrasing` picks one of a few sentence shapes (training can vary it); all mean the same."""
    thing = f"a {scene.size} {scene.colour} {scene.shape} {_WHERE[scene.position]}"
    if phrasing == 0:
        return f"{thing} over {_background_phrase(scene)}"
    if phrasing == 1:
        return f"{_background_phrase(scene)} with {thing}"
    if phrasing == 2:
        return f"{thing}, against {_background_phrase(scene, short=True)}"
    raise ValueError(f"phrasing must be between 0 and {PHRASINGS - 1}, not {phrasing}")


def _background_phrase(scene: Scene, short: bool = False) -> str:
    colour = scene.background_colour
    if scene.background == "gradient":
        return f"a {colour} sky"
    if scene.background == "flat":
        return f"a {colour} background" if short else f"a plain {colour} background"
    if scene.background == "stripes":
        return f"{colour} stripes" if short else f"a striped {colour} background"
    return f"{colour} checks" if short else f"a checkered {colour} background"


_SYNONYMS = {"grey": "gray", "centre": "center", "middle": "center", "big": "large", "checked": "checkered"}
_FILLER = {"a", "an", "the", "over", "on", "with", "against", "in", "at", "and", "of"}


def parse_caption(text: str) -> Scene:
    """The scene a caption describes; ValueError for anything outside the world.

    Reads keywords, not sentence shape: any caption phrasing parses, and so do small variations
    ("grey", "centre", "big"), but every word must belong to the world and the scene must be legible."""
    words = [_SYNONYMS.get(word, word) for word in re.findall(r"[a-z]+", text.lower())]
    remaining = " " + " ".join(words) + " "

    thing, remaining = _take_one(remaining, _THING, "shape (size, colour and shape, e.g. 'a small red star')")
    position, remaining = _take_one(remaining, _POSITION, "position (left, right, center, top or bottom)")
    background, remaining = _take_background(remaining)
    unknown = [word for word in remaining.split() if word not in _FILLER]
    if unknown:
        raise ValueError(f"words outside the world: {' '.join(unknown)!r} in {text!r}")

    size, colour, shape = thing.groups()
    scene = Scene(shape, colour, size, _position_name(position.group(0)), *background)
    if not is_legible(scene):
        raise ValueError(f"a {colour} shape does not stand out on {_background_phrase(scene)}: {text!r}")
    return scene


def _alternatives(words) -> str:
    return "|".join(words)


_THING = re.compile(rf" ({_alternatives(SIZES)}) ({_alternatives(COLOURS)}) ({_alternatives(SHAPES)}) ")
_POSITION = re.compile(r" (on the left|on the right|in the center|at the top|at the bottom) ")
_BACKGROUND_COLOUR = _alternatives(BACKGROUND_TONES)
_BACKGROUND_PATTERNS = (  # most specific first: "a striped blue background" also contains "blue background"
    ("gradient", re.compile(rf" (?:a )?({_alternatives(GRADIENTS)}) sky ")),
    ("stripes", re.compile(rf" (?:a )?striped ({_BACKGROUND_COLOUR}) background | ({_BACKGROUND_COLOUR}) stripes ")),
    ("checks", re.compile(rf" (?:a )?checkered ({_BACKGROUND_COLOUR}) background | ({_BACKGROUND_COLOUR}) checks ")),
    ("flat", re.compile(rf" (?:a )?(?:plain )?({_BACKGROUND_COLOUR}) background ")),
)


def _take_one(text: str, pattern: re.Pattern, what: str) -> tuple[re.Match, str]:
    """The single match of pattern in text, and the text without it."""
    matches = list(pattern.finditer(text))
    if len(matches) != 1:
        raise ValueError(f"expected exactly one {what}, found {len(matches)} in {text.strip()!r}")
    match = matches[0]
    return match, text[: match.start()] + " " + text[match.end() :]


def _take_background(text: str) -> tuple[tuple[str, str], str]:
    found = []
    for kind, pattern in _BACKGROUND_PATTERNS:
        while match := pattern.search(text):
            colour = next(group for group in match.groups() if group)
            found.append((kind, colour))
            text = text[: match.start()] + " " + text[match.end() :]
    if len(found) != 1:
        raise ValueError(f"expected exactly one background, found {len(found)}")
    return found[0], text


def _position_name(phrase: str) -> str:
    return phrase.strip().split()[-1]
