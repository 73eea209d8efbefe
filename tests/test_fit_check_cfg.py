"""`compare` and `bench` check the fit with the prompts their runs encode, asked of the family as `generate` asks it
(pipelines.encoded_prompts at the validated guidance): a base model whose default guidance runs true CFG, run at
another guidance, was predicted with the default's batch."""

import pytest

from quantbench.cli.main import main
from quantbench.core import fit
from quantbench.core.bench import BENCH_PROMPT
from quantbench.core.families.z_image.pipeline import ZImagePipeline
from quantbench.core.generate import plan_generation, run_shape
from quantbench.core.generation import GenerationSettings
from quantbench.core.lab.compare import compare_request, run_compare
from quantbench.core.pipeline_base import MemoryOptions
from quantbench.core.random_model import write_random_model


class Checked(Exception):
    """Raised by the spy once the fit check is asked: nothing loads."""


@pytest.fixture(scope="module")
def z_base(tmp_path_factory):
    """A narrowed Z-Image base: default guidance 4, which runs true CFG (prompt and negative batched)."""
    return write_random_model(tmp_path_factory.mktemp("z") / "z-image-base", "z-image", width_scale=0.0625,
                              distilled=False)


def _spy(shapes: list):
    def refuse_if_too_big(source, folder, shape, force=False, hardware=None):
        shapes.append(shape)
        raise Checked
    return refuse_if_too_big


@pytest.mark.parametrize("guidance, negative, prompts", [
    (0.0, "blurry", ("a red star",)),  # no CFG: the negative prompt is not encoded, one pass per step
    (4.0, None, ("a red star", ZImagePipeline.negative_when_none)),  # CFG against the family's stand-in
])
def test_compare_predicts_the_batch_its_run_makes(z_base, monkeypatch, guidance, negative, prompts):
    """The fit check counted the prompt and the negative one as given, and the batch of the model's default guidance:
    at --guidance 0 two passes a step were predicted for a run of one, and at 4 without a negative prompt the
    stand-in the run encodes was not counted."""
    shapes = []
    monkeypatch.setattr(fit, "refuse_if_too_big", _spy(shapes))
    settings = GenerationSettings(model=str(z_base), prompt="a red star", negative_prompt=negative, guidance=guidance,
                                  width=256, height=256, steps=1)
    with pytest.raises(Checked):
        run_compare(compare_request(settings, "bf16"))
    (shape,) = shapes
    assert (shape.prompts, shape.true_cfg) == (prompts, len(prompts) == 2)
    generated = run_shape(plan_generation(settings), MemoryOptions())  # what `generate` predicts for the same picture
    assert (shape.prompts, shape.true_cfg) == (generated.prompts, generated.true_cfg)


def test_bench_predicts_the_negative_pass_its_runs_make(z_base, monkeypatch):
    """Each bench run draws BENCH_PROMPT at the model's own guidance (4: true CFG against the stand-in negative); the fit
    check counted the prompt alone."""
    shapes = []
    monkeypatch.setattr("quantbench.cli.bench.refuse_if_too_big", _spy(shapes))
    with pytest.raises(Checked):
        main(["bench", "--model", str(z_base), "--size", "64", "--steps", "1", "--precisions", "bf16"])
    (shape,) = shapes
    assert shape.prompts == (BENCH_PROMPT, ZImagePipeline.negative_when_none) and shape.true_cfg is True
