"""FLUX.1's prompt encoders against transformers / diffusers (float32): tokenizers, CLIP's pooled output, T5."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from quantbench.core.families.flux1.clip import load_clip  # noqa: E402
from quantbench.core.families.flux1.t5 import load_t5, relative_position_buckets  # noqa: E402
from quantbench.core.families.flux1.tokenizers import ClipTokenizer, T5Tokenizer  # noqa: E402
from reference.flux1 import (  # noqa: E402
    _clip_vocab_and_merges, build_clip, build_t5, build_tiny_clip_tokenizer, build_tiny_t5_tokenizer)

PROMPTS = [
    "A red fox sitting in the snow at dawn, soft golden light.",
    "",
    "An astronaut riding a horse across a desert under a purple sky full of stars, oil painting, dramatic "
    "clouds, in the style of the old masters, 35mm film grain, " * 4,
    "Zebra ünïcödé 漢字 🦊 and a literal <|endoftext|> and </s> inside   the  PROMPT",
]

# Both sides compute in float32 and differ only in summation order: a few ulps of O(1) activations.
MAX_ABS_ERROR = 1e-4


@pytest.fixture(scope="module")
def tokenizer_folders(tmp_path_factory):
    clip_folder, t5_folder = tmp_path_factory.mktemp("tokenizer"), tmp_path_factory.mktemp("tokenizer_2")
    build_tiny_clip_tokenizer().save_pretrained(clip_folder)
    build_tiny_t5_tokenizer().save_pretrained(t5_folder)
    return clip_folder, t5_folder


def _reference_ids(folder, prompts, max_length):
    """The exact call FluxPipeline makes for either tokenizer."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                     return_tensors="np").input_ids


def test_clip_tokenizer_matches_transformers(tokenizer_folders):
    clip_folder, _ = tokenizer_folders
    ids = ClipTokenizer(clip_folder).encode(PROMPTS)
    assert ids.shape == (len(PROMPTS), 77)
    np.testing.assert_array_equal(ids, _reference_ids(clip_folder, PROMPTS, 77))
    assert ids[2, -1] == ids.max(), "a truncated prompt still ends with the end token"


def test_clip_tokenizer_from_vocab_and_merges(tmp_path):
    """The FLUX.1 repositories ship CLIP's tokenizer as vocab.json + merges.txt, without tokenizer.json."""
    vocab, merges = _clip_vocab_and_merges()
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    expected = transformers.CLIPTokenizer.from_pretrained(tmp_path)(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    np.testing.assert_array_equal(ClipTokenizer(tmp_path).encode(PROMPTS), expected)


@pytest.mark.parametrize("max_length", [16, 64])
def test_t5_tokenizer_matches_transformers(tokenizer_folders, max_length):
    _, t5_folder = tokenizer_folders
    ids = T5Tokenizer(t5_folder).encode(PROMPTS, max_length)
    np.testing.assert_array_equal(ids, _reference_ids(t5_folder, PROMPTS, max_length))
    assert ids[1, 0] == 1 and ids[1, 1] == 0, "the empty prompt is the end token, then padding"


@pytest.mark.parametrize("eos_token_id", [None, 2], ids=["configured-eos", "legacy-eos"])
def test_clip_pooled_output_matches_transformers(tokenizer_folders, tmp_path, eos_token_id):
    clip_folder, _ = tokenizer_folders
    tokenizer = ClipTokenizer(clip_folder)
    eos = tokenizer._tokenizer.token_to_id(tokenizer.eos)
    model = build_clip(len(_clip_vocab_and_merges()[0]), seed=5,
                       eos_token_id=eos if eos_token_id is None else eos_token_id)
    model.save_pretrained(tmp_path)
    ids = tokenizer.encode(PROMPTS)
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).pooler_output.numpy()
    ours, report = load_clip(tmp_path)
    assert not report.unexpected and not report.skipped
    got = np.array(ours.pooled(ids))
    assert got.shape == expected.shape == (len(PROMPTS), 64)
    assert np.abs(got - expected).max() < MAX_ABS_ERROR


def test_clip_loads_the_text_model_prefix_of_older_checkpoints(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build_clip(400, seed=6)
    model.save_pretrained(tmp_path)
    weights = next(tmp_path.glob("*.safetensors"))
    state = load_file(weights)
    save_file({f"text_model.{k}": v for k, v in state.items()}
              | {"text_model.embeddings.position_ids": torch.arange(77)[None]}, weights)
    _, report = load_clip(tmp_path)
    assert report.used == len(state) and not report.unexpected
    assert report.skipped == {"position ids buffer": ["text_model.embeddings.position_ids"]}


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    length = 600
    relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    for buckets, distance in ((32, 128), (16, 64)):
        expected = T5Attention._relative_position_bucket(relative, bidirectional=True, num_buckets=buckets,
                                                         max_distance=distance).numpy()
        np.testing.assert_array_equal(relative_position_buckets(length, buckets, distance), expected)


def test_t5_last_hidden_state_matches_the_pipeline(tokenizer_folders, tmp_path):
    _, t5_folder = tokenizer_folders
    tokenizer = T5Tokenizer(t5_folder)
    model = build_t5(len(build_tiny_t5_tokenizer()), seed=8)
    model.save_pretrained(tmp_path)
    ids = tokenizer.encode(PROMPTS, 64)
    with torch.no_grad():  # FluxPipeline._get_t5_prompt_embeds: no attention mask
        expected = model(torch.from_numpy(ids), output_hidden_states=False)[0].numpy()
    ours, report = load_t5(tmp_path)
    assert not report.unexpected and not report.skipped
    got = np.array(ours(ids))
    assert got.shape == expected.shape == (len(PROMPTS), 64, 64)
    assert np.abs(got - expected).max() < MAX_ABS_ERROR * max(1.0, float(np.abs(expected).max()))
