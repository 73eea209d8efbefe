"""The procedural world: scenes, rendering, captions, sampling and the fixed eval set."""

import zlib
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from quantbench.core.builtin.captions import PHRASINGS, caption, parse_caption
from quantbench.core.builtin.world import (
    BACKGROUND_TONES,
    BACKGROUNDS,
    COLOURS,
    HELDOUT_COMBINATIONS,
    MIN_CONTRAST,
    POSITION_CENTRE,
    POSITIONS,
    SHAPE_COLOURS,
    SHAPES,
    SIZES,
    Scene,
    eval_prompts,
    is_legible,
    render,
    sample_scenes,
    shape_contrast,
)

STAR = Scene("star", "red", "small", "left", "stripes", "blue")
EVAL_CAPTIONS_CRC32 = 1922418937  # of the eval set's captions; see test_eval_prompts_never_change


def _background_of(scene):
    return (scene.background, scene.background_colour)


def test_scene_rejects_values_outside_the_world():
    with pytest.raises(ValueError, match="shape"):
        replace(STAR, shape="hexagon")
    with pytest.raises(ValueError, match="colour"):
        replace(STAR, colour="brown")
    with pytest.raises(ValueError, match="stripes"):
        replace(STAR, background_colour="sunset")


def test_render_is_64x64_rgb_and_deterministic():
    image = render(STAR)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(render(STAR)))


def test_render_draws_the_shape_in_its_colour_and_place():
    scene = Scene("square", "yellow", "large", "right", "flat", "black")
    pixels = np.asarray(render(scene))
    x, y = POSITION_CENTRE["right"]
    assert tuple(pixels[y, x]) == SHAPE_COLOURS["yellow"]
    assert tuple(pixels[2, 2]) == BACKGROUND_TONES["black"][0]
    assert tuple(pixels[y, 10]) == BACKGROUND_TONES["black"][0]  # the left half is empty


def test_ring_has_a_hole_and_circle_does_not():
    ring, circle = (Scene(shape, "white", "large", "center", "flat", "blue") for shape in ("ring", "circle"))
    assert tuple(np.asarray(render(ring))[32, 32]) == BACKGROUND_TONES["blue"][0]
    assert tuple(np.asarray(render(circle))[32, 32]) == SHAPE_COLOURS["white"]


def test_backgrounds_look_like_their_kind():
    def background_only(kind, colour):  # a small shape in the centre leaves the corner rows alone
        return np.asarray(render(Scene("circle", "white", "small", "center", kind, colour))).astype(int)

    flat = background_only("flat", "green")
    assert (flat[:12] == flat[0, 0]).all()
    sunset = background_only("gradient", "sunset")
    assert (sunset[:, 0, 0] == sunset[:, 63, 0]).all()  # constant along each row
    assert sunset[0, 0, 0] < sunset[32, 0, 0] < sunset[63, 0, 0]  # violet -> pink -> orange, reddening down
    for kind in ("stripes", "checks"):
        top_row = background_only(kind, "gray")[0, :, 0]
        assert len(set(top_row.tolist())) >= 2 and np.ptp(top_row) >= 40  # two tones alternate


def test_every_sampled_scene_is_legible_and_never_same_colour_on_same_colour():
    for scene in sample_scenes(2000, seed=1):
        assert is_legible(scene)
        assert scene.colour != scene.background_colour
        assert shape_contrast(scene.colour, scene.background, scene.background_colour) >= MIN_CONTRAST


def test_sampling_is_deterministic():
    assert sample_scenes(50, seed=7) == sample_scenes(50, seed=7)
    assert sample_scenes(50, seed=7) != sample_scenes(50, seed=8)
    first, again = sample_scenes(3, seed=7), sample_scenes(3, seed=7)
    for a, b in zip(first, again):
        assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))


def test_training_split_never_holds_a_heldout_pair_but_covers_everything_else():
    scenes = sample_scenes(20_000, seed=0, split="train")
    pairs = {(scene.colour, scene.shape) for scene in scenes}
    assert not pairs & HELDOUT_COMBINATIONS
    assert len(pairs) == len(COLOURS) * len(SHAPES) - len(HELDOUT_COMBINATIONS)
    assert {scene.size for scene in scenes} == set(SIZES)
    assert {scene.position for scene in scenes} == set(POSITIONS)
    assert {_background_of(scene) for scene in scenes} == set(BACKGROUNDS)


def test_heldout_split_holds_only_heldout_pairs():
    scenes = sample_scenes(500, seed=0, split="heldout")
    assert {(scene.colour, scene.shape) for scene in scenes} == HELDOUT_COMBINATIONS
    with pytest.raises(ValueError):
        sample_scenes(1, seed=0, split="test")


def test_heldout_pairs_are_one_per_shape_and_never_repeat_a_colour():
    colours, shapes = zip(*HELDOUT_COMBINATIONS)
    assert 4 <= len(HELDOUT_COMBINATIONS) <= 6
    assert len(set(colours)) == len(colours) and len(set(shapes)) == len(shapes)


def test_eval_prompts_are_fixed_and_cover_every_value():
    scenes = eval_prompts()
    assert len(scenes) >= 120 and scenes == eval_prompts()
    assert all(is_legible(scene) for scene in scenes)
    assert {scene.shape for scene in scenes} == set(SHAPES)
    assert {scene.colour for scene in scenes} == set(COLOURS)
    assert {scene.size for scene in scenes} == set(SIZES)
    assert {scene.position for scene in scenes} == set(POSITIONS)
    assert {_background_of(scene) for scene in scenes} == set(BACKGROUNDS)
    pairs = Counter((scene.colour, scene.shape) for scene in scenes)
    assert all(pairs[pair] >= 3 for pair in HELDOUT_COMBINATIONS)


def test_eval_prompts_never_change():
    # Measurements are compared across runs and releases: changing the eval set must be deliberate.
    captions = "\n".join(caption(scene) for scene in eval_prompts())
    assert len(eval_prompts()) == 125
    assert zlib.crc32(captions.encode()) == EVAL_CAPTIONS_CRC32


def test_caption_round_trip_for_every_eval_scene_and_phrasing():
    for scene in eval_prompts():
        for phrasing in range(PHRASINGS):
            assert parse_caption(caption(scene, phrasing)) == scene


def test_caption_reads_as_plain_english():
    assert caption(STAR) == "a small red star on the left over a striped blue background"
    assert caption(Scene("ring", "white", "large", "top", "gradient", "sunset"), 1) == (
        "a sunset sky with a large white ring at the top"
    )
    with pytest.raises(ValueError):
        caption(STAR, PHRASINGS)


def test_parse_tolerates_case_punctuation_and_spelling_variants():
    assert parse_caption("A small red star on the left, over a STRIPED blue background.") == STAR
    expected = Scene("square", "white", "large", "center", "checks", "gray")
    assert parse_caption("a big white square in the centre over grey checks") == expected
    assert parse_caption("a large white square in the middle on a checked gray background") == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a small red hexagon on the left over a plain blue background",  # unknown shape
        "a small brown star on the left over a plain blue background",  # unknown colour
        "a small red star on the left",  # no background
        "a small red star over a plain blue background",  # no position
        "a small red star and a large blue circle on the left over a plain gray background",  # two shapes
        "a small red star on the left over a plain blue background, highly detailed",  # extra words
        "a small red star on the left over a plain purple background",  # no purple background
        "a small blue star on the left over a striped blue background",  # same colour: illegible
        "a small orange star on the left over a sunset sky",  # too close to the sunset
    ],
)
def test_parse_rejects_prompts_outside_the_world(text):
    with pytest.raises(ValueError):
        parse_caption(text)
