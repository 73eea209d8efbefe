"""Qwen-Image 2.1 (base and Turbo): Qwen3-VL prompt encoder, single-stream block-causal transformer, RGBA VAE.
The family's descriptor (see core/family.py for the contract)."""

from ...family import DistilledGuidance, Family, Supports
from .components import COMPONENTS, check_components, open_transformer
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
    # latents are 1/16 of the image, and the transformer groups them in 2x2 vision slots
    size_multiple=32,
    random_models=(("qwen-image-2.1", write_random_model),),
)
QwenImage21Pipeline.family = FAMILY
