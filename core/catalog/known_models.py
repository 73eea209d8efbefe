"""The published models quantbench knows, one CatalogEntry each. Adding a model: append its entry to
DECLARED (its component configs go in architectures.py)."""

from __future__ import annotations

from .architectures import (CLIP_L_TEXT, FLUX1_TRANSFORMER, FLUX1_VAE, FLUX1_VAE_ENCODER_PARAMS,
                            FLUX2_DEV_TRANSFORMER, FLUX2_VAE, FLUX2_VAE_ENCODER_PARAMS, KLEIN_4B_TRANSFORMER,
                            KLEIN_9B_TRANSFORMER, MISTRAL_SMALL_24B, MISTRAL_VISION_PARAMS, QWEN25_VL_7B,
                            QWEN25_VL_VISION_PARAMS, QWEN3_4B, QWEN3_8B, QWEN3_VL_8B, QWEN3_VL_8B_UNBUILT_PARAMS,
                            QWEN_IMAGE21_TRANSFORMER, QWEN_IMAGE21_VAE, QWEN_IMAGE21_VAE_DOWNLOAD_PARAMS,
                            QWEN_IMAGE21_VAE_ENGINE_PARAMS, QWEN_IMAGE_TRANSFORMER, QWEN_IMAGE_VAE,
                            QWEN_IMAGE_VAE_DOWNLOAD_PARAMS, QWEN_IMAGE_VAE_ENGINE_PARAMS, T5_XXL_ENCODER,
                            Z_IMAGE_TRANSFORMER)
from .entry import CatalogEntry, Component


def _qwen_image21_components() -> tuple[Component, ...]:
    return (
        Component("transformer", "qwen-image-2.1-transformer", "transformer", QWEN_IMAGE21_TRANSFORMER, 7.12e9),
        Component("text_encoder", "qwen3-vl", "text_encoder", QWEN3_VL_8B, 8.77e9,
                  note="Qwen3-VL-8B; full precision unless --text-encoder-quantize asks (it is 15 GB in bf16)",
                  download_only_params=QWEN3_VL_8B_UNBUILT_PARAMS),
        Component("vae", "qwen-image-2.1-vae", "vae", QWEN_IMAGE21_VAE, 338e6,
                  download_only_params=QWEN_IMAGE21_VAE_DOWNLOAD_PARAMS - QWEN_IMAGE21_VAE_ENGINE_PARAMS),
    )


def _klein_components(transformer: dict, text: dict, transformer_params: float, text_params: float):
    return (
        Component("transformer", "flux2-transformer", "transformer", transformer, transformer_params),
        Component("text_encoder", "qwen3", "text_encoder", text, text_params),
        Component("vae", "flux2-vae", "vae", FLUX2_VAE, 84.0e6, download_only_params=FLUX2_VAE_ENCODER_PARAMS),
    )


def _flux1_components(guidance_embeds: bool):
    """FLUX.1's transformer ([dev] embeds the guidance scale, [schnell] does not), CLIP-L, T5-XXL and its VAE."""
    return (
        Component("transformer", "flux1-transformer", "transformer",
                  {**FLUX1_TRANSFORMER, "guidance_embeds": guidance_embeds}, 11.9e9),
        Component("text_encoder", "clip-text", "text_encoder", CLIP_L_TEXT, 123e6, note="CLIP-L"),
        Component("text_encoder_2", "t5-encoder", "text_encoder_2", T5_XXL_ENCODER, 4.76e9,
                  note="T5-v1.1-XXL encoder"),
        Component("vae", "flux1-vae", "vae", FLUX1_VAE, 83.8e6, download_only_params=FLUX1_VAE_ENCODER_PARAMS),
    )


def _z_image_components(transformer_bytes: int):
    """Z-Image's transformer, the Qwen3-4B it reads the penultimate hidden state of, and FLUX.1's VAE."""
    return (
        Component("transformer", "z-image-transformer", "transformer", Z_IMAGE_TRANSFORMER, 6.15e9,
                  checkpoint_bytes=transformer_bytes),
        Component("text_encoder", "qwen3", "text_encoder", QWEN3_4B, 4.02e9, note="Qwen3-4B"),
        Component("vae", "flux1-vae", "vae", FLUX1_VAE, 83.8e6, download_only_params=FLUX1_VAE_ENCODER_PARAMS),
    )


KLEIN_PRECISIONS = (None, 8, 6, 4)
LARGE_PRECISIONS = (None, 8, 6, 4)

DECLARED: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        id="klein-4b", name="FLUX.2 [klein] 4B", family="flux2", repo="black-forest-labs/FLUX.2-klein-4B",
        components=_klein_components(KLEIN_4B_TRANSFORMER, QWEN3_4B, 3.88e9, 4.02e9),
        distilled=True, default_steps=4, default_guidance=1.0, guidance="none", negative_prompt=False,
        text_encoder_layers=(9, 18, 27), max_sequence_length=512, licence="Apache-2.0", gated=False,
        download_gb=24.0, precisions=KLEIN_PRECISIONS, runnable=True,
        notes="step-distilled from the 4B base; guidance fixed at 1.0"),
    CatalogEntry(
        id="klein-4b-base", name="FLUX.2 [klein] base 4B", family="flux2",
        repo="black-forest-labs/FLUX.2-klein-base-4B",
        components=_klein_components(KLEIN_4B_TRANSFORMER, QWEN3_4B, 3.88e9, 4.02e9),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=(9, 18, 27), max_sequence_length=512, licence="Apache-2.0", gated=False,
        download_gb=None, precisions=KLEIN_PRECISIONS, runnable=True,
        notes="undistilled; true CFG runs the prompt and the negative prompt as a batch of two"),
    CatalogEntry(
        id="klein-9b", name="FLUX.2 [klein] 9B", family="flux2", repo="black-forest-labs/FLUX.2-klein-9B",
        components=_klein_components(KLEIN_9B_TRANSFORMER, QWEN3_8B, 9.08e9, 8.19e9),
        distilled=True, default_steps=4, default_guidance=1.0, guidance="none", negative_prompt=False,
        text_encoder_layers=(9, 18, 27), max_sequence_length=512, licence="FLUX Non-Commercial License",
        gated=True, download_gb=53.0, precisions=KLEIN_PRECISIONS, runnable=True),
    CatalogEntry(
        id="klein-9b-base", name="FLUX.2 [klein] base 9B", family="flux2",
        repo="black-forest-labs/FLUX.2-klein-base-9B",
        components=_klein_components(KLEIN_9B_TRANSFORMER, QWEN3_8B, 9.08e9, 8.19e9),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=(9, 18, 27), max_sequence_length=512, licence="FLUX Non-Commercial License",
        gated=True, download_gb=None, precisions=KLEIN_PRECISIONS, runnable=True),
    CatalogEntry(
        id="flux2-dev", name="FLUX.2 [dev]", family="flux2", repo="black-forest-labs/FLUX.2-dev",
        components=(
            Component("transformer", "flux2-transformer", "transformer", FLUX2_DEV_TRANSFORMER, 32.2e9),
            Component("text_encoder", "mistral", "text_encoder", MISTRAL_SMALL_24B, 24.0e9,
                      note="Mistral-Small-3.x 24B", download_only_params=MISTRAL_VISION_PARAMS),
            Component("vae", "flux2-vae", "vae", FLUX2_VAE, 84.0e6, download_only_params=FLUX2_VAE_ENCODER_PARAMS),
        ),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="embedded", negative_prompt=False,
        text_encoder_layers=(10, 20, 30), max_sequence_length=512,
        licence="FLUX.2 [dev] Non-Commercial License", gated=True, download_gb=177.0,
        precisions=LARGE_PRECISIONS, runnable=True,
        notes="guidance-distilled: one pass per step, embedded guidance (default 4.0), Mistral-Small-3 text encoder"),
    CatalogEntry(
        id="flux1-schnell", name="FLUX.1 [schnell]", family="flux1", repo="black-forest-labs/FLUX.1-schnell",
        components=_flux1_components(guidance_embeds=False),
        distilled=True, default_steps=4, default_guidance=0.0, guidance="none", negative_prompt=False,
        text_encoder_layers=None, max_sequence_length=256, licence="Apache-2.0", gated=False, download_gb=34.0,
        precisions=LARGE_PRECISIONS, runnable=True,
        notes="distilled to 4 steps without guidance; the single-file BFL transformer is accepted too"),
    CatalogEntry(
        id="flux1-dev", name="FLUX.1 [dev]", family="flux1", repo="black-forest-labs/FLUX.1-dev",
        components=_flux1_components(guidance_embeds=True),
        distilled=False, default_steps=28, default_guidance=3.5, guidance="embedded", negative_prompt=False,
        text_encoder_layers=None, max_sequence_length=512, licence="FLUX.1 [dev] Non-Commercial License",
        gated=True, download_gb=34.0, precisions=LARGE_PRECISIONS, runnable=True,
        notes="guidance-distilled (one pass per step); a negative prompt needs --true-cfg (two passes)"),
    CatalogEntry(
        id="qwen-image", name="Qwen-Image", family="qwen-image", repo="Qwen/Qwen-Image",
        components=(
            Component("transformer", "qwen-image-transformer", "transformer", QWEN_IMAGE_TRANSFORMER, 20.4e9),
            Component("text_encoder", "qwen2.5-vl", "text_encoder", QWEN25_VL_7B, 8.29e9, quantizable=False,
                      note="Qwen2.5-VL-7B; kept in full precision (quantizing it degrades prompt understanding)",
                      download_only_params=QWEN25_VL_VISION_PARAMS),
            Component("vae", "qwen-image-vae", "vae", QWEN_IMAGE_VAE, 127e6,
                      download_only_params=QWEN_IMAGE_VAE_DOWNLOAD_PARAMS - QWEN_IMAGE_VAE_ENGINE_PARAMS),
        ),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=None, max_sequence_length=512, licence="Apache-2.0", gated=False, download_gb=58.0,
        precisions=LARGE_PRECISIONS, runnable=True,
        notes="true CFG with norm rescaling; the text encoder stays in full precision by default"),
    CatalogEntry(
        id="z-image-turbo", name="Z-Image-Turbo", family="z-image", repo="Tongyi-MAI/Z-Image-Turbo",
        components=_z_image_components(transformer_bytes=4),
        distilled=True, default_steps=9, default_guidance=0.0, guidance="none", negative_prompt=False,
        text_encoder_layers=(-2,), max_sequence_length=512, licence="Apache-2.0", gated=False, download_gb=32.9,
        precisions=KLEIN_PRECISIONS, runnable=True,
        notes="distilled from Z-Image: 9 steps, no guidance; the repository's transformer is float32 (24.6 GB)"),
    CatalogEntry(
        id="z-image", name="Z-Image", family="z-image", repo="Tongyi-MAI/Z-Image",
        components=_z_image_components(transformer_bytes=2),
        distilled=False, default_steps=50, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=(-2,), max_sequence_length=512, licence="Apache-2.0", gated=False, download_gb=20.5,
        precisions=KLEIN_PRECISIONS, runnable=True,
        notes="base model: true CFG (diffusers' scale: cond + 4 x (cond - uncond)) with a negative prompt"),
    CatalogEntry(
        id="qwen-image-2.1", name="Qwen-Image 2.1", family="qwen-image-2.1", engine="qwen_image21",
        repo="Qwen/Qwen-Image-2.1", components=_qwen_image21_components(),
        distilled=False, default_steps=40, default_guidance=1.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=None, max_sequence_length=1024, licence="Qwen Research License", gated=False,
        download_gb=None, precisions=LARGE_PRECISIONS, runnable=True,
        notes="samples without guidance by default (40 steps); guidance above 1 runs true CFG with a negative "
              "prompt, two passes per step"),
    CatalogEntry(
        id="qwen-image-2.1-turbo", name="Qwen-Image 2.1 Turbo", family="qwen-image-2.1", engine="qwen_image21",
        repo="Qwen/Qwen-Image-2.1-Turbo", components=_qwen_image21_components(),
        distilled=True, default_steps=8, default_guidance=1.0, guidance="none", negative_prompt=False,
        text_encoder_layers=None, max_sequence_length=1024, licence="Qwen Research License", gated=False,
        download_gb=None, precisions=LARGE_PRECISIONS, runnable=True,
        notes="step-distilled: samples on the grid its model_index.json ships (sample_sigmas), no guidance"),
    # The built-in models: declared so that every list shows them; an installation that ships their folders
    # describes them from those (core/catalog/local_folders.py: shipped_builtin).
    CatalogEntry(
        id="demo", name="quantbench demo", family="builtin", engine="flux2", repo=None, components=(),
        distilled=False, default_steps=20, default_guidance=4.0, guidance="true-cfg", negative_prompt=True,
        text_encoder_layers=None, max_sequence_length=77, licence="MIT", gated=False, download_gb=None,
        precisions=(None, 8, 4), runnable=False, shipped=False, default_size=(256, 256),
        notes="built-in model, not yet shipped"),
    CatalogEntry(
        id="demo-turbo", name="quantbench demo turbo", family="builtin", engine="flux2", repo=None, components=(),
        distilled=True, default_steps=4, default_guidance=1.0, guidance="none", negative_prompt=False,
        text_encoder_layers=None, max_sequence_length=77, licence="MIT", gated=False, download_gb=None,
        precisions=(None, 8, 4), runnable=False, shipped=False, default_size=(256, 256),
        notes="built-in model, not yet shipped"),
)
