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
    # Dual-stream blocks with a 4x GELU feed-forward: FLUX.2's 43.1 predicted a narrowed model's denoise peak 4-34%
    # over (256-512 px, with and without CFG); 26 gives -2% to +6% (tests/test_memory_model_prompts.py).
    denoise_per_token=26.0,
    # Where the CPU's tile kernel runs a quantized transformer, a step holds one block's arrays at a time: at most in
    # the image stream's feed-forward (its 4x hidden layer and GELU) beside both streams. Measured 18.7 on the narrowed
    # model (512x512, CFG), where 26 predicted its quantized denoise phase 13% over (tests/test_memory_model_prompts.py).
    denoise_layerwise_per_token=19.0,
    # Where the CPU's elementwise kernel runs (quantized or not: the GELU, the queries' and keys' norms and rotary
    # embedding, the modulated norms): 12.2-13.1 measured on the narrowed model (256 and 512 px, with and without CFG,
    # 4-bit and unquantized), where 19 and 26 predicted 14% and 5% over (tests/test_memory_model_prompts.py).
    denoise_kernel_per_token=12.5,
)
QwenImagePipeline.family = FAMILY
