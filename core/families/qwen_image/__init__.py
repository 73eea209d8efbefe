"""Qwen-Image: the family's descriptor (see core/family.py for the contract)."""

from ...family import Family, Supports
from .components import COMPONENTS, check_components
from .pipeline import QwenImagePipeline, read_defaults
from .random_model import write_random_qwen_image
from .tensor_parallel import TENSOR_PARALLEL

FAMILY = Family(
    name="qwen_image",
    label="Qwen-Image",
    pipeline_classes=("QwenImagePipeline",),
    pipeline=QwenImagePipeline,
    components=COMPONENTS,
    folders=("transformer", "text_encoder", "tokenizer", "vae"),
    # true CFG with norm rescaling; a negative prompt (" " when none is given)
    supports=Supports(negative_prompt=True, embedded_guidance=False),
    read_defaults=read_defaults,
    check_components=check_components,
    tensor_parallel=TENSOR_PARALLEL,
    random_models=(("qwen-image", write_random_qwen_image),),
)
QwenImagePipeline.family = FAMILY
