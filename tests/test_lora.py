"""LoRAs (core/lora.py): a LoRA that diffusers trained and saved draws, through our engine, the picture diffusers
draws with it; it is fused before quantizing (a saved copy and quantizing on the fly agree bit for bit); and every
LoRA that cannot be used is one line and exit 2 before any weight loads. The common part (every family fuses a
LoRA into the layers it names) is in test_family_contract.py."""

from __future__ import annotations

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from lora_files import linear_layers, lora_tensors, write_lora  # noqa: E402
from quantbench.core.checkpoint import open_component  # noqa: E402
from quantbench.core.errors import CheckpointError, InvalidRequest  # noqa: E402
from quantbench.core.generation import GenerationSettings  # noqa: E402
from quantbench.core.lora import read_lora  # noqa: E402
from quantbench.core.lora_request import parse_lora_option  # noqa: E402
from quantbench.core.pipelines import load_pipeline  # noqa: E402
from reference.pipelines import TEXT_LAYERS  # noqa: E402

SIZE, STEPS, PROMPT = 64, 3, "a red circle"
IMAGE_ATOL = 1e-3  # as tests/test_flux2_pipeline.py: float32 summation order, nothing else


def _latents(seed=3):
    return np.random.default_rng(seed).standard_normal((1, 128, SIZE // 16, SIZE // 16)).astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Klein and a LoRA that peft attached to its diffusers transformer (rank 4, alpha 8, rank 2 / alpha 6
    on the single blocks' fused projection through PEFT's patterns), saved by diffusers' save_lora_weights; the
    diffusers pipeline keeps the adapter active."""
    from diffusers import Flux2KleinPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from reference.pipelines import build_tiny_klein

    root = tmp_path_factory.mktemp("lora")
    folder = root / "klein"
    pipe = build_tiny_klein(folder, distilled=True)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder_out_layers": list(TEXT_LAYERS)}))
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, rank_pattern={"to_qkv_mlp_proj": 2},
                        alpha_pattern={"to_qkv_mlp_proj": 6},
                        target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_qkv_mlp_proj"])
    pipe.transformer.add_adapter(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in pipe.transformer.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    Flux2KleinPipeline.save_lora_weights(
        root / "style", transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        transformer_lora_adapter_metadata=pipe.transformer.peft_config["default"].to_dict())
    return folder, pipe, root / "style"


def _diffusers_image(pipe):
    out = pipe(prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=1.0,
               latents=torch.from_numpy(_latents()), output_type="np", text_encoder_out_layers=TEXT_LAYERS)
    return out.images[0]


def _ours(folder, **options):
    pipeline = load_pipeline(folder, allow_download=False, **options)
    result = pipeline.generate(PROMPT, steps=STEPS, width=SIZE, height=SIZE, latents=_latents(), preview=False)
    return np.asarray(result.image).astype(np.float32) / 255


def test_a_lora_diffusers_saved_draws_the_picture_diffusers_draws_with_it(trained):
    folder, pipe, lora = trained
    expected = _diffusers_image(pipe)
    adapted = _ours(folder, loras=[str(lora)])
    assert np.abs(adapted - expected).max() <= 0.5 / 255 + IMAGE_ATOL
    assert np.abs(_ours(folder) - expected).max() > 0.1  # the LoRA changed the picture: the match is its doing
    assert read_lora(lora).layers["transformer"]["single_transformer_blocks.0.attn.to_qkv_mlp_proj"].rank == 2


def test_strength_zero_is_the_model_itself_and_quantizing_follows_the_fused_weights(trained):
    folder, _, lora = trained
    assert np.array_equal(_ours(folder, loras=[f"{lora}:0"]), _ours(folder))
    adapted = _ours(folder, loras=[str(lora)])
    q8_adapted = _ours(folder, loras=[str(lora)], quantize=8)
    q8_base = _ours(folder, quantize=8)
    # 8 bits of the adapted weights stay close to the adapted picture, far from the model without its LoRA
    assert np.abs(q8_adapted - adapted).mean() < np.abs(q8_base - adapted).mean() / 5


def _cli(*args, cwd, home):
    return subprocess.run([sys.executable, "-m", "quantbench.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, timeout=600)


def test_save_with_a_lora_is_bitwise_generate_with_it_and_a_saved_model_refuses_another(trained, tmp_path):
    folder, _, lora = trained
    common = ["--prompt", PROMPT, "--width", SIZE, "--height", SIZE, "--steps", STEPS, "--quiet"]
    saved = _cli("save", "--model", folder, "-q", 4, "--lora", f"{lora}:0.8", "--out", tmp_path / "saved",
                 cwd=tmp_path, home=tmp_path)
    assert saved.returncode == 0, saved.stderr
    assert "fused" in saved.stdout
    record = json.loads((tmp_path / "saved" / "model_index.json").read_text())["quantbench_saved"]
    assert record["loras"] == [{"file": "pytorch_lora_weights.safetensors", "strength": 0.8, "layers": {"transformer": 7}}]
    fly = _cli("generate", "--model", folder, "-q", 4, "--lora", f"{lora}:0.8", *common, "--out", tmp_path / "fly.png",
               "--json", cwd=tmp_path, home=tmp_path)
    assert fly.returncode == 0, fly.stderr
    summary = json.loads(fly.stdout)
    assert summary["loras"] == [[str(lora), 0.8]] and summary["load"]["loras"][0]["strength"] == 0.8
    again = _cli("generate", "--model", tmp_path / "saved", *common, "--out", tmp_path / "saved.png", cwd=tmp_path,
                 home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "LoRA pytorch_lora_weights.safetensors x0.8 (fused when saved)" in again.stdout
    from PIL import Image
    pixels = [np.asarray(Image.open(tmp_path / name)) for name in ("fly.png", "saved.png")]
    assert np.array_equal(*pixels)
    refused = _cli("generate", "--model", tmp_path / "saved", "--lora", lora, *common, "--out", tmp_path / "x.png",
                   cwd=tmp_path, home=tmp_path)
    assert refused.returncode == 2 and "saved quantized" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def _broken(tmp_path, folder, name, change):
    layers = linear_layers(folder, count=2)
    tensors = lora_tensors(layers)
    config = change(tensors, layers)
    return write_lora(tmp_path / name, tensors, config if isinstance(config, dict) else None)


def _rename(old, new):
    def change(tensors, layers):
        for key in list(tensors):
            tensors[key.replace(old, new)] = tensors.pop(key)
    return change


@pytest.mark.parametrize("name,change,message", [
    ("lokr.safetensors", lambda t, _: t.update({"transformer.x.lokr_w1": np.zeros((4, 8), np.float32)}), "LoKr"),
    ("two.safetensors", lambda t, _: t.update({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight":
                                               np.zeros((4, 8), np.float32)}), "diffusers and kohya layouts at once"),
    ("mixed.safetensors", lambda t, _: t.update({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight":
                                                 np.zeros((4, 8), np.float32)}), "one LoRA, one layout"),
    ("half.safetensors", lambda t, _: t.pop(next(k for k in t if "lora_B" in k)), "has lora_A without lora_B"),
    ("ranks.safetensors", lambda t, _: t.update({k: np.zeros((t[k].shape[0], 3), np.float32)
                                                 for k in list(t) if "lora_B" in k}), "lora_A has rank 4 but lora_B"),
    ("nan.safetensors", lambda t, _: t.update({k: np.full_like(t[k], np.nan) for k in list(t)[:1]}), "NaN"),
    ("stray.safetensors", lambda t, _: t.update({"transformer.x.weight": np.zeros((2, 2), np.float32)}),
     "is not a LoRA tensor"),
    ("alphas.safetensors", lambda t, _: [t.pop(k) for k in list(t) if "lora_" in k] and
     t.update({"transformer.a.alpha": np.ones((), np.float32)}), "holds no lora_A and lora_B"),
    ("dora.safetensors", lambda t, _: t.update({"transformer.a.lora_magnitude_vector": np.zeros(2, np.float32)}),
     "DoRA"),
    ("metadata.safetensors", lambda t, _: {"lora_alpha": "eight"}, "gives .* an alpha of"),
])
def test_a_lora_that_cannot_be_read_is_one_line(trained, tmp_path, name, change, message):
    folder = trained[0]
    path = _broken(tmp_path, folder, name, change)
    with pytest.raises(CheckpointError, match=message) as refusal:
        read_lora(path)
    assert "\n" not in str(refusal.value)


@pytest.mark.parametrize("name,change,message", [
    ("other.safetensors", _rename("transformer_blocks", "joint_blocks"), "not a layer of this model's transformer"),
    ("wider.safetensors", lambda t, _: t.update({k: np.zeros((4, t[k].shape[1] * 2), np.float32)
                                                 for k in list(t) if "lora_A" in k}), "made for a model whose"),
    ("encoder2.safetensors", _rename("transformer.", "text_encoder_2."), "adapts a text encoder 2, which this model"),
])
def test_a_lora_for_another_model_is_refused_before_any_weight_loads(trained, tmp_path, name, change, message):
    folder = trained[0]
    path = _broken(tmp_path, folder, name, change)
    result = _cli("generate", "--model", folder, "--lora", path, "--prompt", PROMPT, "--width", SIZE, "--height", SIZE,
                  "--steps", 1, "--out", tmp_path / "x.png", cwd=tmp_path, home=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert message.replace("text encoder 2", "text encoder 2") in result.stderr, result.stderr
    assert "step 1/1" not in result.stderr and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("value,message", [
    ("style.safetensors:strong", "LoRA strength 'strong' is not a number"),
    ("style.safetensors:11", "LoRA strength 11 is not allowed"),
    ("style.safetensors:nan", "is not a number"),
    ("", "is empty"),
])
def test_a_bad_strength_is_refused_as_it_is_parsed(value, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_lora_option(value)


def test_files_the_option_names(trained, tmp_path):
    lora = trained[2]
    assert parse_lora_option(f"{lora}:-0.5").strength == -0.5
    assert read_lora(lora).path.name == "pytorch_lora_weights.safetensors"  # a folder: the file diffusers wrote in it
    (tmp_path / "style.bin").write_bytes(b"\x80\x04")
    (tmp_path / "two").mkdir()
    for name in ("a", "b"):
        write_lora(tmp_path / "two" / f"{name}.safetensors", {"transformer.x.lora_A.weight": np.zeros((1, 2), np.float32),
                                                                "transformer.x.lora_B.weight": np.zeros((2, 1), np.float32)})
    for path, message in ((tmp_path / "style.bin", "from .safetensors files only"),
                          (tmp_path / "two", "2 .safetensors files in this folder"),
                          (tmp_path / "missing.safetensors", "no such LoRA file")):
        with pytest.raises(InvalidRequest, match=message):
            read_lora(path)


def test_the_record_keeps_the_loras_and_reads_them_back(trained, tmp_path, monkeypatch):
    lora = trained[2]
    monkeypatch.chdir(lora.parent)
    settings = GenerationSettings(model="demo", prompt="x", loras=(f"{lora.name}:0.7",)).validate()
    record = settings.to_record()
    assert record["loras"] == [[str(lora), 0.7]]  # absolute: a rerun from elsewhere finds it
    again = GenerationSettings.from_record(json.loads(json.dumps(record)))
    assert [(str(r.path), r.strength) for r in again.loras] == [(str(lora), 0.7)]
    assert GenerationSettings(model="demo", prompt="x").to_record()["loras"] is None


def test_sensitivity_measures_the_adapted_model(trained, tmp_path):
    folder, _, lora = trained
    common = ["sensitivity", "--model", folder, "--prompt", PROMPT, "--size", SIZE, "--steps", 1, "--json"]
    runs = [_cli(*common, *extra, cwd=tmp_path, home=tmp_path) for extra in ([], ["--lora", lora])]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    errors = [{unit["name"]: unit["error"] for unit in json.loads(run.stdout)["units"]} for run in runs]
    assert errors[0].keys() == errors[1].keys() and errors[0] != errors[1]


def _original_names(folder) -> dict[str, tuple[int, int]]:
    """The tiny Klein's fused attention, MLP and single-block layers under the original code's names, with shapes."""
    tensors = open_component(folder / "transformer").tensors
    inner = tensors["transformer_blocks.0.attn.to_q.weight"].shape[0]
    width = tensors["transformer_blocks.0.attn.to_q.weight"].shape[1]
    return {"double_blocks.0.img_attn.qkv": (3 * inner, width),
            "double_blocks.0.txt_attn.qkv": (3 * inner, width),
            "double_blocks.0.img_mlp.0": tuple(tensors["transformer_blocks.0.ff.linear_in.weight"].shape),
            "double_blocks.0.txt_attn.proj": tuple(tensors["transformer_blocks.0.attn.to_add_out.weight"].shape),
            "single_blocks.1.linear1": tuple(tensors["single_transformer_blocks.1.attn.to_qkv_mlp_proj.weight"].shape),
            "single_blocks.0.linear2": tuple(tensors["single_transformer_blocks.0.attn.to_out.weight"].shape)}


def test_a_lora_under_the_original_codes_names_draws_what_diffusers_draws_with_it(trained, tmp_path):
    """As ai-toolkit saves a FLUX.2 LoRA (diffusion_model.double_blocks.0.img_attn.qkv: one A, B for Q, K and V
    stacked): diffusers converts it to its layers on loading; ours fuses each part of B into its layer."""
    from diffusers import Flux2KleinPipeline

    folder = trained[0]
    tensors = lora_tensors(_original_names(folder), rank=4, scale=0.3, seed=5, prefix="diffusion_model.")
    lora = write_lora(tmp_path / "ai-toolkit.safetensors", tensors)
    pipe = Flux2KleinPipeline.from_pretrained(folder)
    pipe.load_lora_weights(str(lora))
    expected = _diffusers_image(pipe)
    adapted = _ours(folder, loras=[str(lora)])
    assert np.abs(adapted - expected).max() <= 0.5 / 255 + IMAGE_ATOL
    assert np.abs(_ours(folder) - expected).max() > 0.05
    assert read_lora(lora).layout == "original"


def _rows(parts, index):
    return slice(sum(parts[:index]), sum(parts[:index + 1]))


# (family, variant, the original code's fused layer, {diffusers' layer: (its part, parts)}) -- parts in units of
# the fused layer's rows; "swap": (scale, shift) stored as (shift, scale)
ORIGINAL_LAYERS = [
    ("flux1", "schnell", "double_blocks.0.img_attn.qkv",
     {f"transformer_blocks.0.attn.to_{p}": (i, (1, 1, 1)) for i, p in enumerate("qkv")}),
    ("flux1", "schnell", "single_blocks.0.linear1",
     {**{f"single_transformer_blocks.0.attn.to_{p}": (i, (1, 1, 1, 4)) for i, p in enumerate("qkv")},
      "single_transformer_blocks.0.proj_mlp": (3, (1, 1, 1, 4))}),
    ("flux1", "schnell", "final_layer.adaLN_modulation.1", {"norm_out.linear": "swap"}),
    ("z_image", "turbo", "layers.0.attention.qkv",
     {f"layers.0.attention.to_{p}": (i, (1, 1, 1)) for i, p in enumerate("qkv")}),
    ("qwen_image21", "base", "transformer_blocks.0.img_mlp.gate_up",
     {"transformer_blocks.0.img_mlp.gate_layer": (0, (1, 1)), "transformer_blocks.0.img_mlp.proj": (1, (1, 1))}),
]


@pytest.mark.parametrize("family,variant,fused,parts", ORIGINAL_LAYERS, ids=[f"{f}-{n}" for f, _, n, _ in ORIGINAL_LAYERS])
def test_a_fused_layer_of_the_original_code_adapts_each_of_diffusers_layers_with_its_rows(
        family, variant, fused, parts, tmp_path):
    from reference.families import TINY_MODELS

    folder = tmp_path / "model"
    TINY_MODELS[family][variant].build(folder)
    source = open_component(folder / "transformer").load()
    weights = {name: np.array(source[f"{name}.weight"].astype(mx.float32)) for name in parts}
    in_features = next(iter(weights.values())).shape[1]
    out_features = sum(w.shape[0] for w in weights.values())
    tensors = lora_tensors({fused: (out_features, in_features)}, rank=2, seed=7, prefix="model.diffusion_model.")
    lora = write_lora(tmp_path / "original.safetensors", tensors)
    pipeline = load_pipeline(folder, allow_download=False, loras=[f"{lora}:0.5"], **TINY_MODELS[family][variant].load)
    pipeline.ensure_transformer()
    report = pipeline.loader.reports["transformer"]
    loaded = dict(tree_flatten(pipeline.transformer.parameters()))
    parameter = {key: name for name, key in report.stored_as.items()}
    a = tensors[f"model.diffusion_model.{fused}.lora_A.weight"].astype(np.float64)
    b = tensors[f"model.diffusion_model.{fused}.lora_B.weight"].astype(np.float64)
    for name, part in parts.items():
        if part == "swap":
            half = b.shape[0] // 2
            rows = np.concatenate([b[half:], b[:half]])
        else:
            unit = b.shape[0] // sum(part[1])
            span = _rows(part[1], part[0])
            rows = b[span.start * unit: span.stop * unit]
        expected = weights[name] + 0.5 * (rows @ a)
        assert np.allclose(np.array(loaded[parameter[f"{name}.weight"]]), expected, rtol=1e-5, atol=1e-6), name


def test_a_kohya_lora_draws_what_diffusers_draws_with_it(trained, tmp_path):
    """kohya's names (lora_unet_double_blocks_0_img_attn_qkv: the original code's, dots as underscores), its
    lora_down/lora_up and an alpha per layer (alpha / rank = 0.5 here)."""
    from diffusers import Flux2KleinPipeline

    folder = trained[0]
    layers = {"lora_unet_" + name.replace(".", "_"): shape for name, shape in _original_names(folder).items()}
    tensors = lora_tensors(layers, rank=4, scale=0.4, seed=6, prefix="", alpha=2.0)
    for key in list(tensors):
        tensors[key.replace("lora_A", "lora_down").replace("lora_B", "lora_up")] = tensors.pop(key)
    lora = write_lora(tmp_path / "kohya.safetensors", tensors)
    pipe = Flux2KleinPipeline.from_pretrained(folder)
    pipe.load_lora_weights(str(lora))
    expected = _diffusers_image(pipe)
    assert np.abs(_ours(folder, loras=[str(lora)]) - expected).max() <= 0.5 / 255 + IMAGE_ATOL
    assert np.abs(_ours(folder) - expected).max() > 0.05
    assert read_lora(lora).layout == "kohya"


def test_a_kohya_lora_of_a_text_encoder_adapts_the_checkpoints_own_layers(trained, tmp_path):
    folder = trained[0]
    tensors = open_component(folder / "text_encoder").tensors
    layers = {"lora_te1_" + name.replace(".", "_"): tuple(tensors[f"{name}.weight"].shape)
              for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")}
    tensors = lora_tensors(layers, rank=2, seed=8, prefix="")
    lora = write_lora(tmp_path / "te.safetensors", tensors)
    pipeline = load_pipeline(folder, allow_download=False, loras=[str(lora)])
    assert pipeline.info.to_dict()["loras"][0]["layers"] == {"text_encoder": 2}
    encoded = np.array(pipeline.encode_prompts([PROMPT]))
    assert not np.array_equal(encoded, np.array(load_pipeline(folder, allow_download=False).encode_prompts([PROMPT])))


def test_a_lora_file_gone_before_the_transformer_loads_is_one_line(trained, tmp_path):
    """The transformer loads after the prompt is encoded (MemoryOptions' evict_text_encoder): a LoRA file deleted
    meanwhile was a traceback from MLX's loader."""
    from quantbench.core.pipeline_base import MemoryOptions

    folder, _, lora = trained
    copy = tmp_path / "style.safetensors"
    copy.write_bytes((lora / "pytorch_lora_weights.safetensors").read_bytes())
    pipeline = load_pipeline(folder, allow_download=False, loras=[str(copy)],
                             memory=MemoryOptions(evict_text_encoder=True))
    assert pipeline.transformer is None
    copy.unlink()
    with pytest.raises(CheckpointError, match="style.safetensors: cannot be read") as refusal:
        pipeline.generate(PROMPT, steps=1, width=SIZE, height=SIZE, preview=False)
    assert "\n" not in str(refusal.value)
