"""BFL's original single-file FLUX.1 checkpoints load to the same model as the diffusers folder."""

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from safetensors.torch import load_file, save_file  # noqa: E402

from quantbench.core.checkpoint import TensorInfo  # noqa: E402
from quantbench.core.errors import CheckpointError  # noqa: E402
from quantbench.core.families.flux1.pipeline import Flux1Pipeline  # noqa: E402
from quantbench.core.families.flux1.single_file import infer_config  # noqa: E402
from reference.flux1 import build_tiny_flux1  # noqa: E402

SIZE = 64

# diffusers module -> BFL module, for the tensors that are only renamed.
RENAMED = {
    "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
}
DOUBLE = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin", "attn.to_out.0": "img_attn.proj",
          "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
          "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2"}
DOUBLE_NORMS = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}


def to_bfl(state: dict) -> dict:
    """The inverse of the mapping under test, written out by hand: fuse QKV (and the MLP input), swap the
    final (scale, shift) to (shift, scale), rename."""
    out = {}
    doubles = {int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")}
    singles = {int(k.split(".")[1]) for k in state if k.startswith("single_transformer_blocks.")}
    for leaf in ("weight", "bias"):
        for ours, theirs in RENAMED.items():
            if f"{ours}.{leaf}" in state:
                out[f"{theirs}.{leaf}"] = state[f"{ours}.{leaf}"]
        scale, shift = state[f"norm_out.linear.{leaf}"].chunk(2)
        out[f"final_layer.adaLN_modulation.1.{leaf}"] = torch.cat([shift, scale])
        for i in doubles:
            block = f"transformer_blocks.{i}"
            for ours, theirs in DOUBLE.items():
                out[f"double_blocks.{i}.{theirs}.{leaf}"] = state[f"{block}.{ours}.{leaf}"]
            out[f"double_blocks.{i}.img_attn.qkv.{leaf}"] = torch.cat(
                [state[f"{block}.attn.to_{p}.{leaf}"] for p in "qkv"])
            out[f"double_blocks.{i}.txt_attn.qkv.{leaf}"] = torch.cat(
                [state[f"{block}.attn.add_{p}_proj.{leaf}"] for p in "qkv"])
        for i in singles:
            block = f"single_transformer_blocks.{i}"
            for ours, theirs in SINGLE.items():
                out[f"single_blocks.{i}.{theirs}.{leaf}"] = state[f"{block}.{ours}.{leaf}"]
            out[f"single_blocks.{i}.linear1.{leaf}"] = torch.cat(
                [state[f"{block}.attn.to_{p}.{leaf}"] for p in "qkv"] + [state[f"{block}.proj_mlp.{leaf}"]])
    for i in doubles:
        for ours, theirs in DOUBLE_NORMS.items():
            out[f"double_blocks.{i}.{theirs}.scale"] = state[f"transformer_blocks.{i}.{ours}.weight"]
    for i in singles:
        for ours, theirs in SINGLE_NORMS.items():
            out[f"single_blocks.{i}.{theirs}.scale"] = state[f"single_transformer_blocks.{i}.{ours}.weight"]
    assert sum(t.numel() for t in out.values()) == sum(t.numel() for t in state.values())
    return out


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-dev")
    build_tiny_flux1(folder, dev=True, seed=4)
    return folder


@pytest.fixture(scope="module")
def bfl_state(dev):
    return to_bfl(load_file(str(dev / "transformer" / "diffusion_pytorch_model.safetensors")))


def _image(folder):
    latents = np.random.default_rng(2).standard_normal((1, 16, SIZE // 8, SIZE // 8)).astype(np.float32)
    model = Flux1Pipeline.load(folder)
    return model, np.asarray(model.generate("a red circle", steps=2, width=SIZE, height=SIZE, latents=latents).image)


def _without_transformer_weights(dev, tmp_path):
    copy = shutil.copytree(dev, tmp_path / "model")
    (copy / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    return copy


def test_single_file_beside_the_diffusers_folders_gives_the_same_image(dev, bfl_state, tmp_path):
    copy = _without_transformer_weights(dev, tmp_path)
    save_file(bfl_state, str(copy / "flux1-dev.safetensors"))
    model, image = _image(copy)
    assert model.info.to_dict()["transformer_source"] == "single file flux1-dev.safetensors"
    report = model.loader.reports["transformer"]
    assert report.used == len(load_file(str(dev / "transformer" / "diffusion_pytorch_model.safetensors")))
    assert not report.unexpected and not report.skipped
    assert np.array_equal(image, _image(dev)[1])


def test_bfl_keys_in_the_transformer_folder_with_the_training_prefix(dev, bfl_state, tmp_path):
    copy = _without_transformer_weights(dev, tmp_path)
    save_file({f"model.diffusion_model.{k}": v for k, v in bfl_state.items()},
              str(copy / "transformer" / "flux1-dev.safetensors"))
    model, image = _image(copy)
    assert model.info.to_dict()["transformer_source"] == "transformer/ in the original BFL layout"
    assert np.array_equal(image, _image(dev)[1])


def test_a_quantized_single_file_load_matches_the_quantized_folder_load(dev, bfl_state, tmp_path):
    copy = _without_transformer_weights(dev, tmp_path)
    save_file(bfl_state, str(copy / "flux1-dev.safetensors"))
    from_file, from_folder = Flux1Pipeline.load(copy, quantize=4), Flux1Pipeline.load(dev, quantize=4)
    assert from_file.info.quantization[0].layers == from_folder.info.quantization[0].layers
    kwargs = dict(steps=2, width=SIZE, height=SIZE, seed=9)
    assert np.array_equal(np.asarray(from_file.generate("a cat", **kwargs).image),
                          np.asarray(from_folder.generate("a cat", **kwargs).image))


def test_a_single_file_without_config_needs_one_unless_flux_sized(dev, bfl_state, tmp_path):
    copy = _without_transformer_weights(dev, tmp_path)
    shutil.rmtree(copy / "transformer")
    save_file(bfl_state, str(copy / "flux1-dev.safetensors"))
    with pytest.raises(CheckpointError, match="heads of 32 needs transformer/config.json"):
        Flux1Pipeline.load(copy)


def test_no_transformer_at_all_is_one_line(dev, tmp_path):
    copy = _without_transformer_weights(dev, tmp_path)
    with pytest.raises(CheckpointError, match="no transformer \\(neither transformer/ weights nor a FLUX.1 single-file"):
        Flux1Pipeline.load(copy)


@pytest.mark.parametrize("guidance", [True, False], ids=["dev", "schnell"])
def test_config_read_off_a_real_sized_header(guidance):
    """FLUX.1's shapes (2 of its 19 double and 3 of its 38 single blocks, headers only)."""
    shapes = {"img_in.weight": (3072, 64), "txt_in.weight": (3072, 4096), "vector_in.in_layer.weight": (3072, 768),
              "final_layer.linear.weight": (64, 3072)}
    shapes |= {f"double_blocks.{i}.img_attn.norm.query_norm.scale": (128,) for i in range(2)}
    shapes |= {f"single_blocks.{i}.linear1.weight": (21504, 3072) for i in range(3)}
    if guidance:
        shapes["guidance_in.in_layer.weight"] = (3072, 256)
    tensors = {f"model.diffusion_model.{k}": TensorInfo(v, "BF16", None) for k, v in shapes.items()}
    assert infer_config(tensors) == {
        "in_channels": 64, "out_channels": None, "num_layers": 2, "num_single_layers": 3, "attention_head_dim": 128,
        "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
        "guidance_embeds": guidance, "axes_dims_rope": [16, 56, 56]}
