"""The analyser on rendered ground truth: clean, degraded, and against wrong prompts."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageFilter

from quantbench.core.builtin.analyser import (
    ATTRIBUTES,
    Reading,
    analyse,
    attribute_accuracy,
    check_reading,
    read_image,
)
from quantbench.core.builtin.world import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    eval_prompts,
    render,
    render_background,
    sample_scenes,
)

EVAL_SCENES = eval_prompts()


@pytest.fixture(scope="module")
def eval_images():
    return [render(scene) for scene in EVAL_SCENES]


@pytest.fixture(scope="module")
def eval_readings(eval_images):
    return [read_image(image) for image in eval_images]


def _with_noise(image, sigma, seed):
    noise = np.random.default_rng(seed).normal(0, sigma, (64, 64, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).round().astype(np.uint8))


def _accuracy(images, scenes):
    return attribute_accuracy([analyse(image, scene) for image, scene in zip(images, scenes)])


def test_reads_every_attribute_of_the_whole_eval_set(eval_readings):
    results = [check_reading(reading, scene) for reading, scene in zip(eval_readings, EVAL_SCENES)]
    failures = [(scene, result) for scene, result in zip(EVAL_SCENES, results) if not all(result.values())]
    assert not failures
    assert attribute_accuracy(results)["all"] == 1.0


def test_reads_heldout_combinations():
    scenes = sample_scenes(40, seed=3, split="heldout")
    assert _accuracy([render(scene) for scene in scenes], scenes)["all"] == 1.0


def test_robust_to_mild_noise(eval_images):
    noisy = [_with_noise(image, sigma=8, seed=index) for index, image in enumerate(eval_images)]
    accuracy = _accuracy(noisy, EVAL_SCENES)
    assert min(accuracy[name] for name in ATTRIBUTES) >= 0.95


def test_robust_to_slight_blur(eval_images):
    blurred = [image.filter(ImageFilter.GaussianBlur(1.0)) for image in eval_images]
    accuracy = _accuracy(blurred, EVAL_SCENES)
    assert min(accuracy[name] for name in ATTRIBUTES) >= 0.95


def test_robust_to_a_slight_tint_and_a_shifted_texture(eval_images):
    tinted, scenes = [], []
    for index, (image, scene) in enumerate(zip(eval_images, EVAL_SCENES)):
        if scene.background in ("stripes", "checks"):
            toward_centre = (2 if scene.position != "bottom" else -2, 2 if scene.position != "right" else -2)
            shifted = np.roll(np.asarray(image, dtype=int), toward_centre, axis=(0, 1))  # pattern out of phase
            tint = -15 if index % 2 else 15
            tinted.append(Image.fromarray(np.clip(shifted + tint, 0, 255).astype(np.uint8)))
            scenes.append(scene)
    assert len(scenes) > 40
    assert _accuracy(tinted, scenes)["all"] >= 0.95


def _wrong_values(scene):
    """Every other value of every attribute: (attribute, wrong scene)."""
    for shape in SHAPES:
        yield "shape", replace(scene, shape=shape)
    for colour in COLOURS:
        yield "colour", replace(scene, colour=colour)
    for size in SIZES:
        yield "size", replace(scene, size=size)
    for position in POSITIONS:
        yield "position", replace(scene, position=position)
    for kind, colour in BACKGROUNDS:
        yield "background", replace(scene, background=kind, background_colour=colour)


def test_rejects_every_wrong_value_of_every_attribute(eval_readings):
    checked = 0
    for reading, scene in zip(eval_readings, EVAL_SCENES):
        for attribute, wrong in _wrong_values(scene):
            if wrong == scene:
                continue
            result = check_reading(reading, wrong)
            assert not result[attribute], (scene, wrong)
            assert all(result[other] for other in ATTRIBUTES if other != attribute)
            checked += 1
    assert checked > 3000


def test_analyse_rejects_a_wrong_caption(eval_images):
    image, scene = eval_images[0], EVAL_SCENES[0]
    wrong = replace(scene, colour="white" if scene.colour != "white" else "red", position="top")
    assert analyse(image, wrong) == {"shape": True, "colour": False, "size": True, "position": False, "background": True}


def test_an_empty_background_has_no_shape():
    scene = Scene("circle", "white", "small", "center", "stripes", "green")
    empty = render_background("stripes", "green")
    assert read_image(empty) == Reading(background=("stripes", "green"))
    assert analyse(empty, scene) == {name: name == "background" for name in ATTRIBUTES}


def test_reads_arrays_and_other_sizes_alike(eval_images, eval_readings):
    image = eval_images[7]
    assert read_image(np.asarray(image)) == eval_readings[7]
    assert read_image(image.resize((256, 256), Image.Resampling.BICUBIC)) == eval_readings[7]


def test_attribute_accuracy():
    results = [
        {"shape": True, "colour": True, "size": True, "position": True, "background": True},
        {"shape": False, "colour": True, "size": True, "position": True, "background": False},
    ]
    accuracy = attribute_accuracy(results)
    assert accuracy["shape"] == 0.5 and accuracy["colour"] == 1.0 and accuracy["background"] == 0.5
    assert accuracy["mean"] == pytest.approx(0.8)
    assert accuracy["all"] == 0.5
    with pytest.raises(ValueError):
        attribute_accuracy([])
