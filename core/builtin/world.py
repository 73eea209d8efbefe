"""The procedural world the built-in model draws: one shape on one background, at 64x64.

A `Scene` names every attribute of a picture; `render` draws it with Pillow (captions.py says it in
plain English and reads such a sentence back). Everything is deterministic: the same scene always
gives the same pixels, and `sample_scenes` gives the same scenes for the same seed.

The world is kept small on purpose (5 shapes, 8 colours, 2 sizes, 5 positions, 14 backgrounds) so
that a tiny model can learn all of it. The backgrounds mix flat colours with smooth gradients and
fine textures, because gradients and textures are what quantization destroys first.

Two rules keep every picture readable:
- a shape is never drawn on a background of its colour's name, nor on one that shows a colour
  close to its own (`is_legible`): no blue star on blue stripes, no orange star in a sunset sky;
- the colour-shape pairs in `HELDOUT_COMBINATIONS` never appear in the training split, so the eval
  set can test whether the model composes attributes it has only seen apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # shapes and diagonal stripes are drawn at 4x and averaged down, for smooth edges

SHAPES = ("circle", "square", "triangle", "star", "ring")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "center", "top", "bottom")
BACKGROUND_KINDS = ("flat", "gradient", "stripes", "checks")

SHAPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (250, 140, 20),
    "yellow": (250, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "purple": (145, 60, 200),
    "pink": (250, 120, 190),
    "white": (245, 245, 245),
}
COLOURS = tuple(SHAPE_COLOURS)

# Flat backgrounds use the first tone; stripes and checks alternate both. Background colours are
# darker or more muted than the shape colours of the same name, so the two never read alike.
BACKGROUND_TONES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "blue": ((25, 45, 110), (60, 90, 165)),
    "green": ((30, 90, 45), (70, 135, 80)),
    "gray": ((100, 100, 100), (150, 150, 150)),
    "black": ((20, 20, 25), (65, 65, 70)),
}
# Vertical gradients, top to bottom, as evenly spaced colour stops.
GRADIENTS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "sunset": ((45, 30, 85), (150, 60, 110), (235, 125, 65)),  # violet, dusky pink, orange
    "blue": ((30, 80, 170), (140, 190, 235)),
}
BACKGROUND_COLOURS: dict[str, tuple[str, ...]] = {
    "flat": tuple(BACKGROUND_TONES),
    "gradient": tuple(GRADIENTS),
    "stripes": tuple(BACKGROUND_TONES),
    "checks": tuple(BACKGROUND_TONES),
}
BACKGROUNDS: tuple[tuple[str, str], ...] = tuple(
    (kind, colour) for kind in BACKGROUND_KINDS for colour in BACKGROUND_COLOURS[kind]
)

# Radius (half the bounding box) in pixels at 64x64; large shapes cover three times the area.
SIZE_RADIUS = {"small": 8, "large": 14}
# Centres at 64x64. A large shape at the edge still leaves a 4-pixel border of background.
POSITION_CENTRE = {"left": (18, 32), "right": (46, 32), "center": (32, 32), "top": (32, 18), "bottom": (32, 46)}
RING_INNER = 0.55  # the ring's hole, as a fraction of its radius
STRIPE_PERIOD = 8  # diagonal stripes, 4 pixels of each tone along a row
CHECK_CELL = 8  # checks of 8x8 pixels

# A shape colour must stay this far (RGB distance) from every colour of its background.
MIN_CONTRAST = 80.0

# Colour-shape pairs that never appear in training: one per shape, no colour twice, each pair drawn
# from colours and shapes the model sees often in other combinations.
HELDOUT_COMBINATIONS: frozenset[tuple[str, str]] = frozenset(
    {("blue", "triangle"), ("yellow", "ring"), ("purple", "square"), ("green", "star"), ("pink", "circle")}
)


@dataclass(frozen=True)
class Scene:
    """One picture of the world: a shape of some colour, size and position on a background."""

    shape: str
    colour: str
    size: str
    position: str
    background: str  # one of BACKGROUND_KINDS
    background_colour: str  # one of BACKGROUND_COLOURS[background]; for gradients "sunset" or "blue"

    def __post_init__(self):
        for field, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, COLOURS),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
            ("background", self.background, BACKGROUND_KINDS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r} (expected one of {', '.join(allowed)})")
        if self.background_colour not in BACKGROUND_COLOURS[self.background]:
            allowed = ", ".join(BACKGROUND_COLOURS[self.background])
            raise ValueError(f"no {self.background} background in {self.background_colour!r} (expected {allowed})")


# ---------------------------------------------------------------- rendering


def render(scene: Scene) -> Image.Image:
    """The scene as a 64x64 RGB image.

    The shape is drawn at 4x and averaged down to the fraction of each pixel it covers, then
    blended over the background: smooth edges without the halo a sharpening filter would leave."""
    background = _background_pixels(scene.background, scene.background_colour).astype(np.float64)
    coverage = _shape_coverage(scene)[..., None]
    pixels = background * (1 - coverage) + np.array(SHAPE_COLOURS[scene.colour]) * coverage
    return Image.fromarray(pixels.round().astype(np.uint8))


def render_background(kind: str, colour: str, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """(64, 64, 3) uint8 background alone; `shift` moves a texture's pattern by (dx, dy) pixels."""
    pixels = _background_pixels(kind, colour)
    if kind in ("stripes", "checks"):  # both patterns repeat across the image, so a shift is a roll
        return np.roll(pixels, shift, axis=(1, 0))
    return pixels.copy()


def background_colours(kind: str, colour: str) -> np.ndarray:
    """(k, 3) float: the colours a background is made of (a gradient's, one per row at 64x64)."""
    if kind == "gradient":
        return _gradient_rows(GRADIENTS[colour]).astype(np.float64)
    tones = BACKGROUND_TONES[colour]
    return np.array(tones[:1] if kind == "flat" else tones, dtype=np.float64)


@cache
def _background_pixels(kind: str, colour: str) -> np.ndarray:
    """(64, 64, 3) uint8, cached and shared, hence read-only."""
    pixels = _draw_background(kind, colour)
    pixels.flags.writeable = False
    return pixels


def _draw_background(kind: str, colour: str) -> np.ndarray:
    if kind == "gradient":
        return np.repeat(_gradient_rows(GRADIENTS[colour])[:, None, :], IMAGE_SIZE, axis=1)
    dark, light = (np.array(tone, dtype=np.float64) for tone in BACKGROUND_TONES[colour])
    if kind == "flat":
        return np.broadcast_to(dark, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)
    # Sample the pattern at 4x4 points per pixel: the share of light samples antialiases the
    # diagonal stripes (checks fall on pixel edges and stay crisp).
    samples = (np.arange(IMAGE_SIZE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    x, y = samples[None, :], samples[:, None]
    if kind == "stripes":
        is_light = np.mod(x + y, STRIPE_PERIOD) < STRIPE_PERIOD / 2
    else:
        is_light = (np.floor(x / CHECK_CELL) + np.floor(y / CHECK_CELL)) % 2 == 0
    light_share = _average_blocks(is_light.astype(np.float64))[..., None]
    return (dark + light_share * (light - dark)).round().astype(np.uint8)


def _average_blocks(samples: np.ndarray) -> np.ndarray:
    """(64*s, 64*s) samples -> (64, 64) means of each s x s block."""
    return samples.reshape(IMAGE_SIZE, SUPERSAMPLE, IMAGE_SIZE, SUPERSAMPLE).mean(axis=(1, 3))


def _gradient_rows(stops: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """(64, 3) uint8: the stops linearly interpolated from the top row to the bottom row."""
    t = (np.arange(IMAGE_SIZE) + 0.5) / IMAGE_SIZE * (len(stops) - 1)
    stop_positions = np.arange(len(stops))
    channels = [np.interp(t, stop_positions, [stop[c] for stop in stops]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def _shape_coverage(scene: Scene) -> np.ndarray:
    """(64, 64) float in [0, 1]: how much of each pixel the shape covers."""
    scale = SUPERSAMPLE
    mask = Image.new("L", (IMAGE_SIZE * scale, IMAGE_SIZE * scale))
    draw = ImageDraw.Draw(mask)
    cx, cy = (c * scale for c in POSITION_CENTRE[scene.position])
    r = SIZE_RADIUS[scene.size] * scale
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r - 1, cy + r - 1), fill=255)
    elif scene.shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r - 1, cy + r - 1), fill=255)
    elif scene.shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r - 1, cy + r - 1), fill=255)
        inner = r * RING_INNER
        draw.ellipse((cx - inner, cy - inner, cx + inner - 1, cy + inner - 1), fill=0)
    elif scene.shape == "triangle":
        half_height = r * np.sqrt(3) / 2  # equilateral, side 2r, centred in its bounding box
        draw.polygon([(cx, cy - half_height), (cx + r, cy + half_height), (cx - r, cy + half_height)], fill=255)
    else:
        draw.polygon(_star_points(cx, cy, r), fill=255)
    return _average_blocks(np.asarray(mask, dtype=np.float64) / 255)


def _star_points(cx: float, cy: float, r: float, points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, r, r * inner)
    xs, ys = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
    ys += cy - (ys.min() + ys.max()) / 2  # the points reach lower than r below: centre the bounding box
    return list(zip(xs.tolist(), ys.tolist()))


# ---------------------------------------------------------------- legibility and sampling


def is_legible(scene: Scene) -> bool:
    """Whether the shape's colour stands out from every colour of its background."""
    return stands_out(scene.colour, scene.background, scene.background_colour)


def stands_out(colour: str, kind: str, background_colour: str) -> bool:
    """A shape colour is never drawn on a background of the same name, nor on one too close to it."""
    return colour != background_colour and shape_contrast(colour, kind, background_colour) >= MIN_CONTRAST


@cache
def shape_contrast(colour: str, kind: str, background_colour: str) -> float:
    """RGB distance from a shape colour to the nearest colour its background can show.

    A texture blends its two tones at every edge, so it is measured against the whole segment
    between them; a gradient against each of its rows."""
    point = np.array(SHAPE_COLOURS[colour], dtype=np.float64)
    colours = background_colours(kind, background_colour)
    if kind in ("stripes", "checks"):
        return float(distance_to_segment(point[None], colours[0], colours[1])[0])
    return float(np.linalg.norm(colours - point, axis=-1).min())


def distance_to_segment(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(..., 3) colours -> (...) distance to the nearest colour on the segment start..end."""
    return np.linalg.norm(points - nearest_on_segment(points, start, end), axis=-1)


def nearest_on_segment(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """(..., 3) colours -> (..., 3) nearest colours on the segment start..end."""
    direction = end - start
    t = np.clip(((points - start) @ direction) / (direction @ direction), 0.0, 1.0)
    return start + t[..., None] * direction


def sample_scenes(n: int, seed: int, split: str = "train") -> list[Scene]:
    """n random legible scenes, the same for the same seed.

    "train" never contains a held-out colour-shape pair; "heldout" contains only those pairs."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r} (expected 'train' or 'heldout')")
    rng = np.random.default_rng(seed)
    heldout = sorted(HELDOUT_COMBINATIONS)
    scenes: list[Scene] = []
    while len(scenes) < n:
        if split == "train":
            colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        else:
            colour, shape = heldout[rng.integers(len(heldout))]
        kind, background_colour = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        scene = Scene(
            shape=shape,
            colour=colour,
            size=SIZES[rng.integers(len(SIZES))],
            position=POSITIONS[rng.integers(len(POSITIONS))],
            background=kind,
            background_colour=background_colour,
        )
        if split == "train" and (colour, shape) in HELDOUT_COMBINATIONS:
            continue
        if is_legible(scene):
            scenes.append(scene)
    return scenes


def eval_prompts() -> list[Scene]:
    """The fixed evaluation set: 125 legible scenes.

    Every colour-shape pair appears three times (the held-out pairs four times), while size,
    position and background each walk through their values in turn, so every value of every
    attribute is covered. Built by enumeration, not by a random generator, so it never changes."""
    scenes = []
    step = 0
    background_cursor = 0
    for repeat in range(4):
        for colour in COLOURS:
            for shape in SHAPES:
                if repeat == 3 and (colour, shape) not in HELDOUT_COMBINATIONS:
                    continue
                while True:  # the next background in turn that this colour stands out on
                    kind, background_colour = BACKGROUNDS[background_cursor % len(BACKGROUNDS)]
                    background_cursor += 1
                    if stands_out(colour, kind, background_colour):
                        break
                scenes.append(
                    Scene(
                        shape=shape,
                        colour=colour,
                        size=SIZES[step % len(SIZES)],
                        position=POSITIONS[(step // len(SIZES) + repeat) % len(POSITIONS)],
                        background=kind,
                        background_colour=background_colour,
                    )
                )
                step += 1
    return scenes
