"""FLUX.2 [dev] end to end against diffusers: a tiny Flux2Pipeline (Mistral3 text encoder, transformer
with a guidance embedder) saved with save_pretrained and loaded by our engine, all in float32."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import mlx.core as mx  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from quantbench.core.errors import CheckpointError, InvalidRequest  # noqa: E402
from quantbench.core.families.flux2.mistral_text_encoder import load_mistral_text_encoder  # noqa: E402
from quantbench.core.families.flux2.pipeline import Flux2Pipeline, read_defaults  # noqa: E402
from quantbench.core.families.flux2.tokenizer import MISTRAL_CHAT, PromptTokenizer  # noqa: E402
from quantbench.core.saved_models import save_quantized  # noqa: E402
from reference.pipelines import TEXT_LAYERS, build_tiny_dev  # noqa: E402

SIZE, STEPS = 64, 3
IMAGE_ATOL = 1e-3  # as for Klein: float32 on both sides, only summation order differs
PROMPTS = ["a red fox in the snow", "", "an astronaut riding a horse [IMG] under a purple sky",
           "a literal [INST] and ünïcödé 🦊 in the prompt"]


@pytest.fixture(scope="module")
def tiny_dev(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-dev")
    return folder, build_tiny_dev(folder)


def _latents(seed=3):
    return np.random.default_rng(seed).standard_normal((1, 128, SIZE // 16, SIZE // 16)).astype(np.float32)


def _ours(folder, **kwargs):
    return Flux2Pipeline.load(folder, text_encoder_layers=TEXT_LAYERS, **kwargs)


def _image(result):
    return np.asarray(result.image).astype(np.float32) / 255


def _diffusers_tokens(pipe, prompts, max_length):
    """The exact call Flux2Pipeline._get_mistral_3_small_prompt_embeds makes."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    return pipe.tokenizer.apply_chat_template(
        format_input(prompts=prompts, system_message=pipe.system_message), add_generation_prompt=False,
        tokenize=True, return_dict=True, return_tensors="np", padding="max_length", truncation=True,
        max_length=max_length)


@pytest.mark.parametrize("max_length", [512, 128])
def test_tokenizer_matches_the_processor(tiny_dev, max_length):
    folder, pipe = tiny_dev
    ours = PromptTokenizer(folder / "tokenizer", MISTRAL_CHAT)
    expected = _diffusers_tokens(pipe, PROMPTS, max_length)
    input_ids, attention_mask = ours.encode(PROMPTS, max_length=max_length)
    np.testing.assert_array_equal(input_ids, expected["input_ids"])
    np.testing.assert_array_equal(attention_mask, expected["attention_mask"])
    assert input_ids[0, 0] == ours._tokenizer.token_to_id("<s>") and input_ids[0, 1] != input_ids[0, 0], \
        "exactly one BOS, from the template"
    if max_length == 128:
        assert attention_mask[2].all(), "the long prompt should be truncated"
    assert not attention_mask[1].all(), "the empty prompt should be padded"


def test_prompt_features_match_diffusers(tiny_dev):
    folder, pipe = tiny_dev
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(["a blue star", ""], max_sequence_length=512,
                                         text_encoder_out_layers=TEXT_LAYERS)
    expected = expected.numpy()
    got = np.array(_ours(folder).encode_prompts(["a blue star", ""]))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("guidance", [4.0, 1.5])
def test_final_image_matches_diffusers(tiny_dev, guidance):
    folder, pipe = tiny_dev
    expected = pipe(prompt="a red circle", height=SIZE, width=SIZE, num_inference_steps=STEPS,
                    guidance_scale=guidance, latents=torch.from_numpy(_latents()), output_type="np",
                    text_encoder_out_layers=TEXT_LAYERS).images[0]
    result = _ours(folder).generate("a red circle", steps=STEPS, guidance=guidance, width=SIZE, height=SIZE,
                                    latents=_latents())
    assert np.abs(_image(result) - expected).max() <= 0.5 / 255 + IMAGE_ATOL
    assert result.guidance == guidance and len(result.step_seconds) == STEPS


def test_a_reference_image_draws_what_diffusers_draws_from_it(tiny_dev, tmp_path):
    """[dev] edits as Klein does (diffusers' Flux2Pipeline `image=`): the reference's tokens beside the image's."""
    from PIL import Image

    from test_reference_images import _picture

    folder, pipe = tiny_dev
    reference = _picture(tmp_path / "reference.png", (80, 96), seed=5)
    expected = pipe(prompt="a red circle", image=[Image.open(reference)], height=SIZE, width=SIZE,
                    num_inference_steps=STEPS, guidance_scale=4.0, latents=torch.from_numpy(_latents()),
                    output_type="np", text_encoder_out_layers=TEXT_LAYERS).images[0]
    result = _ours(folder).generate("a red circle", steps=STEPS, guidance=4.0, width=SIZE, height=SIZE,
                                    latents=_latents(), images=(reference,))
    assert np.abs(_image(result) - expected).max() <= 0.5 / 255 + IMAGE_ATOL


def test_defaults_are_devs_embedded_guidance(tiny_dev):
    folder, _ = tiny_dev
    defaults = read_defaults(folder)
    assert (defaults.guidance_mode, defaults.steps, defaults.guidance) == ("embedded", 50, 4.0)
    assert not defaults.distilled and not defaults.negative_prompt
    model = _ours(folder)
    assert model.info.to_dict()["guidance_mode"] == "embedded"
    default = model.generate("a ring", steps=2, width=SIZE, height=SIZE, seed=4)
    explicit = model.generate("a ring", steps=2, guidance=4.0, width=SIZE, height=SIZE, seed=4)
    weaker = model.generate("a ring", steps=2, guidance=1.0, width=SIZE, height=SIZE, seed=4)
    assert default.guidance == 4.0 and np.array_equal(np.asarray(default.image), np.asarray(explicit.image))
    assert not np.array_equal(np.asarray(default.image), np.asarray(weaker.image)), "guidance goes into the model"


def test_a_negative_prompt_is_refused_in_one_line(tiny_dev):
    folder, _ = tiny_dev
    with pytest.raises(InvalidRequest, match="negative prompt needs an unconditional pass") as info:
        _ours(folder).generate("a circle", negative_prompt="blurry", width=SIZE, height=SIZE)
    assert "\n" not in str(info.value)


def test_default_layers_are_devs(tiny_dev):
    """Without a choice, model_index or catalog entry, [dev] stacks 10, 20, 30 (our tiny encoder has 6 layers)."""
    folder, _ = tiny_dev
    with pytest.raises(CheckpointError, match="has 6 layers, so it has no hidden state 10"):
        Flux2Pipeline.load(folder)


def test_vision_parts_are_skipped_with_a_reason(tiny_dev):
    folder, _ = tiny_dev
    encoder, report = load_mistral_text_encoder(folder / "text_encoder", TEXT_LAYERS)
    assert len(encoder.layers) == 5 and "q_norm" not in encoder.layers[0].self_attn
    vision = report.skipped["vision tower: FLUX.2 prompts are text only"]
    projector = report.skipped["multimodal projector: FLUX.2 prompts are text only"]
    assert vision and all(k.startswith("vision_tower.") for k in vision)
    assert projector and all(k.startswith("multi_modal_projector.") for k in projector)
    assert {k.split(".")[3] for k in report.skipped["layers after the last one the pipeline reads"]} == {"5"}
    assert report.unexpected == []


@pytest.mark.parametrize("layout", ["model.language_model.", ""])
def test_other_checkpoint_layouts_load_the_same(tiny_dev, tmp_path, layout):
    """transformers >= 4.52's layout (model.language_model.*, model.vision_tower.*, lm_head) and a
    text-only one (model.*) give the same features as the layout transformers 5 saves."""
    folder, _ = tiny_dev
    source = folder / "text_encoder"
    tensors = load_file(str(source / "model.safetensors"))
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("language_model.model."):
            renamed[(layout or "model.") + key.removeprefix("language_model.model.")] = value
        elif layout:
            renamed["model." + key] = value
    renamed["lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"].clone()
    save_file(renamed, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config if layout else config["text_config"]))

    ids, mask = PromptTokenizer(folder / "tokenizer", MISTRAL_CHAT).encode(["a red fox"], max_length=32)
    features = []
    for encoder_folder in (source, tmp_path):
        encoder, report = load_mistral_text_encoder(encoder_folder, TEXT_LAYERS)
        assert report.unexpected == []
        features.append(np.array(encoder.hidden_states(mx.array(ids), mx.array(mask), TEXT_LAYERS)))
    np.testing.assert_array_equal(features[0], features[1])


def test_quantized_generation_runs_and_saves(tiny_dev, tmp_path):
    folder, _ = tiny_dev
    full = _ours(folder).generate("a red circle", steps=2, width=SIZE, height=SIZE, latents=_latents())
    model = _ours(folder, quantize=4, text_encoder_quantize=8)
    assert (model.info.transformer_bits, model.info.text_encoder_bits) == (4, 8)
    result = model.generate("a red circle", steps=2, width=SIZE, height=SIZE, latents=_latents())
    error = np.abs(_image(result) - _image(full))
    assert 0 < error.mean() < 0.1, "quantized: close to full precision, not equal"

    saved = save_quantized(model, tmp_path / "dev-q4")
    reloaded = Flux2Pipeline.load(saved)
    assert reloaded.info.text_encoder_layers == TEXT_LAYERS and reloaded.info.defaults.guidance_mode == "embedded"
    again = reloaded.generate("a red circle", steps=2, width=SIZE, height=SIZE, latents=_latents())
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))
