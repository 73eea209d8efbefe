"""Qwen-Image 2.1's prompt encoding against diffusers: the processor folder's tokenizer and chat template, and
Qwen3-VL's language model read before its final norm (float32)."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from quantbench.core.errors import InvalidRequest  # noqa: E402
from quantbench.core.families.qwen_image21.pipeline import QwenImage21Pipeline  # noqa: E402
from quantbench.core.families.qwen_image21.text_encoder import load_text_encoder  # noqa: E402
from quantbench.core.families.qwen_image21.tokenizer import QwenImage21Tokenizer  # noqa: E402

# The encoder's output is O(1) per feature; two float32 implementations agree to a few ulps per layer.
ATOL = 1e-4


@pytest.fixture(scope="module")
def model(tiny_qwen_image21):
    folder, _ = tiny_qwen_image21
    return QwenImage21Pipeline.load(folder)


@pytest.mark.parametrize("prompt", ["a red circle", "", "Three apples, two bananas and 1 orange; 42 red balloons!"])
def test_prompt_features_match_diffusers(tiny_qwen_image21, model, prompt):
    _, pipe = tiny_qwen_image21
    with torch.no_grad():
        expected, mask, image_slots = pipe.encode_prompt(prompt)
    assert mask is None and not image_slots.any()
    (features,) = model.encode_prompts([prompt])
    assert features.shape == expected.shape[1:]
    assert np.abs(np.array(features) - expected[0].numpy()).max() < ATOL


def test_dropped_tokens_are_counted_with_the_folders_own_chat_template(tiny_qwen_image21, tmp_path):
    """The pipeline drops as many tokens as the chat template renders for the system turn: a template that
    renders it differently changes the count, as it changes diffusers' `_drop_idx`."""
    folder, pipe = tiny_qwen_image21
    assert QwenImage21Tokenizer(folder / "processor").template_tokens == pipe._drop_idx
    processor = tmp_path / "processor"
    shutil.copytree(folder / "processor", processor)
    template = (processor / "chat_template.jinja").read_text()
    (processor / "chat_template.jinja").write_text(template.replace("{{- '<|im_end|>\\n' }}",
                                                                    "{{- '\\n<|im_end|>\\n\\n' }}"))
    assert QwenImage21Tokenizer(processor).template_tokens > pipe._drop_idx
    # the older layout: the template in chat_template.json
    (processor / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    (processor / "chat_template.jinja").unlink()
    assert QwenImage21Tokenizer(processor).template_tokens == pipe._drop_idx


def test_every_text_encoder_key_is_used_or_skipped_with_a_reason(tiny_qwen_image21):
    folder, _ = tiny_qwen_image21
    _, report = load_text_encoder(folder / "text_encoder")
    assert not report.unexpected
    reasons = {reason.split(":")[0]: sorted(keys) for reason, keys in report.skipped.items()}
    assert set(reasons) == {"vision tower", "final norm and LM head"}
    assert all(k.startswith("model.visual.") for k in reasons["vision tower"])
    assert reasons["final norm and LM head"] == ["lm_head.weight", "model.language_model.norm.weight"]


@pytest.mark.parametrize("prompt,message", [
    ("a cat <|image_pad|>", "vision token"),
    ("a cat " * 1100, "reads at most 1024"),
])
def test_prompts_the_encoder_cannot_take_are_refused_in_one_line(model, prompt, message):
    with pytest.raises(InvalidRequest, match=message) as info:
        model.encode_prompts([prompt])
    assert "\n" not in str(info.value)
