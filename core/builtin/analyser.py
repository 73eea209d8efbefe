"""Reads a picture of the world back and checks each attribute of its prompt.

The world is procedural, so a picture can be read with fixed rules instead of a second model.
`read_image` reads every attribute without looking at the prompt, which is what lets `analyse`
reject a wrong prompt as readily as it accepts the right one.

1. Background. The outer 3 pixels never hold the shape (a large shape stops 4 pixels short of the
   edge), so every one of the 14 backgrounds is rendered alone and its border compared with the
   picture's: the nearest in mean squared RGB distance wins, with a uniform tint counting only half
   (a slightly darker picture keeps its stripes). Textures are compared at every phase of their
   pattern, so shifted stripes or checks still match.
2. Foreground. Each pixel is compared with what that background predicts there: a flat colour (the
   border's median), a gradient's row colour (the median of the row's border pixels), or for a
   texture the nearest colour between its two tones, since its edges blend them. Pixels more than
   SEED_DISTANCE away, in their largest 4-connected blob, are the shape's core, and the median of
   the most distinct of them is the shape's colour. Each pixel then gets a coverage, its projection
   on the line from its background colour to the shape colour; the shape is the largest blob of
   pixels more than half covered, an outline that does not depend on the contrast.
3. The shape's attributes. Colour: the nearest named shape colour. Position: the nearest named
   anchor to the centre of the bounding box. Size: the bounding box's longer side (16 pixels small,
   28 large). Shape, from descriptors that ignore scale: background enclosed by the shape makes a
   ring; a triangle is the only shape widest near its bottom; of the rest, the fill of the bounding
   box tells square (1.0), circle (0.79) and star (0.45) apart.

On rendered pictures every attribute is read right; the tests hold it to that on the whole eval set
and to at least 95% under gaussian noise and blur. Limits: a small star blurred beyond a 1.2-pixel
gaussian turns into a round blob, and textures whose contrast falls below about a quarter read as
flat, which is the point: that is the damage the eval is there to catch.

Pictures are read at 64x64 (other sizes are resized first), with numpy and Pillow only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from .world import (
    BACKGROUND_TONES,
    BACKGROUNDS,
    CHECK_CELL,
    IMAGE_SIZE,
    POSITION_CENTRE,
    SHAPE_COLOURS,
    STRIPE_PERIOD,
    Scene,
    nearest_on_segment,
    render_background,
)

ATTRIBUTES = ("shape", "colour", "size", "position", "background")

BORDER = 3  # pixels of the edge that only ever show background
SEED_DISTANCE = 50.0  # RGB distance from the background that surely belongs to the shape (noise stays well below)
MIN_SHAPE_PIXELS = 12
TINT_WEIGHT = 0.5  # how much a uniform colour shift of the whole border counts against a background
LARGE_EXTENT = 19  # bounding box side: 16 small, 28 large (blur shortens a star's points by a few pixels)
HOLE_FRACTION = 0.08  # of the filled area; a ring's hole is about 0.3
WIDEST_TOLERANCE = 0.9  # rows this close to the widest count as widest
TRIANGLE_WIDEST = 0.7  # a triangle is widest at its base (0.9 of its height), the others at 0.4-0.5
SQUARE_FILL = 0.89  # of the bounding box: square 1.0, circle 0.79, star 0.45 (blur: up to 0.67)
CIRCLE_FILL = 0.70


@dataclass(frozen=True)
class Reading:
    """What the analyser sees in a picture; the shape's fields are None when no shape was found."""

    background: tuple[str, str]  # (kind, colour) as in world.BACKGROUNDS
    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None


def analyse(image: Image.Image | np.ndarray, scene: Scene) -> dict[str, bool]:
    """For each attribute of the prompt's scene, whether the picture shows it."""
    return check_reading(read_image(image), scene)


def check_reading(reading: Reading, scene: Scene) -> dict[str, bool]:
    """For each attribute of the scene, whether the reading agrees (to check many prompts against one read)."""
    return {
        "shape": reading.shape == scene.shape,
        "colour": reading.colour == scene.colour,
        "size": reading.size == scene.size,
        "position": reading.position == scene.position,
        "background": reading.background == (scene.background, scene.background_colour),
    }


def attribute_accuracy(results: list[dict[str, bool]]) -> dict[str, float]:
    """Fraction correct per attribute, "mean" over all attributes, and "all" (every attribute right)."""
    if not results:
        raise ValueError("no results to score")
    accuracy = {name: float(np.mean([result[name] for result in results])) for name in ATTRIBUTES}
    accuracy["mean"] = float(np.mean([accuracy[name] for name in ATTRIBUTES]))
    accuracy["all"] = float(np.mean([all(result[name] for name in ATTRIBUTES) for result in results]))
    return accuracy


def read_image(image: Image.Image | np.ndarray) -> Reading:
    """Every attribute the picture shows, read without knowing its prompt."""
    pixels = _as_pixels(image)
    background = _classify_background(pixels)
    predicted = _background_prediction(pixels, background)
    mask, colour = _segment(pixels, predicted)
    if mask is None:
        return Reading(background=background)
    left, top, right, bottom = _bounding_box(mask)
    centre = np.array([(left + right) / 2, (top + bottom) / 2])
    extent = max(right - left, bottom - top) + 1
    return Reading(
        background=background,
        shape=_classify_shape(mask),
        colour=_nearest_name(colour, SHAPE_COLOURS),
        size="large" if extent > LARGE_EXTENT else "small",
        position=_nearest_name(centre, POSITION_CENTRE),
    )


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), inclusive."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _as_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float64)


def _nearest_name(value: np.ndarray, named: dict) -> str:
    names = list(named)
    distances = np.linalg.norm(np.array([named[name] for name in names], dtype=np.float64) - value, axis=-1)
    return names[int(distances.argmin())]


# ---------------------------------------------------------------- background


@cache
def _border_mask() -> np.ndarray:
    mask = np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    mask[BORDER:-BORDER, BORDER:-BORDER] = False
    return mask


@cache
def _border_references() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every background's border at every phase of its pattern.

    Returns (borders (rows, pixels * 3), their squared norms, their mean colours (rows, 3), and for
    each row the index of its background in BACKGROUNDS)."""
    borders, owners = [], []
    for index, (kind, colour) in enumerate(BACKGROUNDS):
        for shift in _pattern_phases(kind):
            borders.append(render_background(kind, colour, shift)[_border_mask()])
            owners.append(index)
    borders = np.array(borders, dtype=np.float64)
    flat = borders.reshape(len(borders), -1)
    return flat, (flat**2).sum(axis=1), borders.mean(axis=1), np.array(owners)


def _pattern_phases(kind: str) -> list[tuple[int, int]]:
    if kind == "stripes":
        return [(dx, 0) for dx in range(STRIPE_PERIOD)]  # diagonal: shifts along x cover every phase
    if kind == "checks":  # shifting by one cell in x and in y gives the same pattern
        return [(dx, dy) for dx in range(2 * CHECK_CELL) for dy in range(CHECK_CELL)]
    return [(0, 0)]


def _classify_background(pixels: np.ndarray) -> tuple[str, str]:
    """The background whose border, at its best phase, is nearest.

    The error is the mean squared RGB distance with the part a uniform tint explains (the squared
    difference of the mean colours) counted at TINT_WEIGHT: a generated picture a little darker
    than the world keeps its stripes, where plain mean squared error would call them flat."""
    references, reference_norms, reference_means, owners = _border_references()
    border = pixels[_border_mask()]
    pixel_count = len(border)
    mean_squared = (reference_norms - 2 * (references @ border.ravel()) + (border**2).sum()) / pixel_count
    tint_squared = ((reference_means - border.mean(axis=0)) ** 2).sum(axis=1)
    errors = mean_squared - (1 - TINT_WEIGHT) * tint_squared
    best = np.full(len(BACKGROUNDS), np.inf)
    np.minimum.at(best, owners, errors)
    return BACKGROUNDS[int(best.argmin())]


def _background_prediction(pixels: np.ndarray, background: tuple[str, str]) -> np.ndarray:
    """(64, 64, 3): the background colour the picture would show at each pixel without the shape."""
    kind, colour = background
    border = pixels[_border_mask()]
    if kind == "flat":
        return np.broadcast_to(np.median(border, axis=0), pixels.shape)
    if kind == "gradient":
        sides = np.concatenate([pixels[:, :BORDER], pixels[:, -BORDER:]], axis=1)
        return np.broadcast_to(np.median(sides, axis=1)[:, None, :], pixels.shape)
    dark, light = (np.array(tone, dtype=np.float64) for tone in BACKGROUND_TONES[colour])
    tint = border.mean(axis=0) - (dark + light) / 2  # the border shows both tones about equally
    return nearest_on_segment(pixels, dark + tint, light + tint)


# ---------------------------------------------------------------- foreground


def _segment(pixels: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(mask of the shape, its colour), or (None, None) when nothing stands out from the background."""
    difference = np.linalg.norm(pixels - predicted, axis=-1)
    core = _largest_component(difference > SEED_DISTANCE)
    if core.sum() < MIN_SHAPE_PIXELS:
        return None, None
    most_distinct = core & (difference >= np.percentile(difference[core], 60))
    colour = np.median(pixels[most_distinct], axis=0)

    towards_shape = colour - predicted
    alpha = ((pixels - predicted) * towards_shape).sum(-1) / np.maximum((towards_shape**2).sum(-1), 1e-6)
    near_core = _dilate(core, steps=2)
    mask = _largest_component((alpha > 0.5) & near_core)
    if mask.sum() < MIN_SHAPE_PIXELS:
        return None, None
    return mask, colour


def _dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """4-connected dilation."""
    for _ in range(steps):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown
    return mask


def _flood(seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The pixels of `allowed` 4-connected to `seeds`."""
    reached = seeds & allowed
    while True:
        grown = _dilate(reached) & allowed
        if (grown == reached).all():
            return reached
        reached = grown


def _largest_component(mask: np.ndarray) -> np.ndarray:
    largest = np.zeros_like(mask)
    unvisited = mask.copy()
    while unvisited.sum() > largest.sum():
        seed = np.zeros_like(mask)
        seed[np.unravel_index(np.argmax(unvisited), mask.shape)] = True
        component = _flood(seed, mask)
        unvisited &= ~component
        if component.sum() > largest.sum():
            largest = component
    return largest


# ---------------------------------------------------------------- shape


def _classify_shape(mask: np.ndarray) -> str:
    outside = np.zeros_like(mask)
    outside[[0, -1], :] = outside[:, [0, -1]] = True
    filled = ~_flood(outside, ~mask)
    if (filled & ~mask).sum() > HOLE_FRACTION * filled.sum():
        return "ring"
    left, top, right, bottom = _bounding_box(filled)
    widths = filled[top : bottom + 1].sum(axis=1)
    widest_rows = np.nonzero(widths >= WIDEST_TOLERANCE * widths.max())[0]
    if (widest_rows.mean() + 0.5) / len(widths) > TRIANGLE_WIDEST:
        return "triangle"
    fill = filled.sum() / ((right - left + 1) * (bottom - top + 1))
    if fill > SQUARE_FILL:
        return "square"
    return "circle" if fill > CIRCLE_FILL else "star"
