"""Qwen-Image 2.1 (base and Turbo): Qwen3-VL prompt encoder, single-stream block-causal transformer, RGBA VAE.
The family's descriptor (see core/family.py for the contract)."""

from ...family import DistilledGuidance, Family, Supports
from .components import COMFY_TRANSFORMER_RULES, COMPONENTS, check_components, open_transformer
from .pipeline import QwenImage21Pipeline, check_guidance, read_defaults
from .random_model import write_random_model
from .tensor_parallel import TENSOR_PARALLEL

FAMILY = Family(
    name="qwen_image21",
    label="Qwen-Image 2.1",
    pipeline_classes=("QwenImage21Pipeline",),
    pipeline=QwenImage21Pipeline,
    components=COMPONENTS,
    folders=("transformer", "text_encoder", "processor", "vae"),
    # true CFG above guidance 1 (the base model's default is none); Turbo takes neither
    supports=Supports(negative_prompt=True, embedded_guidance=False),
    read_defaults=read_defaults,
    distilled_guidance=DistilledGuidance("Qwen-Image 2.1 Turbo", "it samples without guidance", "the base model"),
    check_guidance=check_guidance,
    open_transformer=open_transformer,
    check_components=check_components,
    tensor_parallel=TENSOR_PARALLEL,
    lora_layout=tuple(COMFY_TRANSFORMER_RULES),  # a LoRA under the original code's layer names
    # latents are 1/16 of the image, and the transformer groups them in 2x2 vision slots
    size_multiple=32,
    random_models=(("qwen-image-2.1", write_random_model),),
    # The prompt's keys and values, computed once per generation, are held through the denoising; each step runs
    # the image tokens alone (transformer.py, text_prefix).
    denoise_prompt_cache=True,
    # Measured on a narrowed random model (benchmarks/memory_model.py --fit, docs/measurements.md): a step's
    # activations per image token and inner width, unquantized (25.5-26.0), with the tile kernel running the
    # quantized layers (19.3-19.6) and with the elementwise kernel running the blocks (13.3-13.5), at 256 and 512 px.
    denoise_per_token=26.0,
    denoise_layerwise_per_token=19.6,
    denoise_kernel_per_token=13.5,
)
QwenImage21Pipeline.family = FAMILY
