"""Predicted memory of a model at a precision and a resolution, read from the engine's own modules.

Everything here is a function of catalog data (core/catalog/: each component's config and family) and a
`Plan` (precisions, resolution, how the text encoder and the VAE are handled, how weights are loaded,
which MLX backend runs it). By concern:

- weights.py: parameters and bytes of each component, counted on the module its family builds from the
  config (lazily: nothing is allocated), with the family's own layer policy; what the download holds besides.
- activations.py: the working set of the encode, denoise and decode phases, from structural formulas with
  coefficients measured on MLX, per backend.
- calibration.py: what a calibration (gptq, awq) holds at its peak.
- prediction.py: the peak of each phase and of loading, for a Plan.

Checked against published tables (within 3%), against the engine's bytes (exactly) and its peaks (within
10%) in tests/test_memory_model.py.
"""

from .activations import (BACKENDS, PIXELS_PER_TOKEN, BackendProfile, backend_profile, decode_bytes,
                          decode_tile_bytes, denoise_bytes, image_tokens, prompt_feature_bytes, text_encode_bytes)
from .prediction import DTYPE_BYTES, GB, LOAD_MODES, TEXT_ENCODER_MODES, GiB, MiB, Plan, Prediction, default_dtype, predict
from .weights import (POLICIES, QUANTIZE_ALL, Architecture, ComponentSize, Layer, architecture, component_size,
                      entry_facts, layer_policy, quantized_layer_bytes)

__all__ = [
    "BACKENDS", "PIXELS_PER_TOKEN", "BackendProfile", "backend_profile", "decode_bytes", "decode_tile_bytes",
    "denoise_bytes", "image_tokens", "prompt_feature_bytes", "text_encode_bytes",
    "DTYPE_BYTES", "GB", "LOAD_MODES", "TEXT_ENCODER_MODES", "GiB", "MiB", "Plan", "Prediction", "default_dtype",
    "predict",
    "POLICIES", "QUANTIZE_ALL", "Architecture", "ComponentSize", "Layer", "architecture", "component_size",
    "entry_facts", "layer_policy", "quantized_layer_bytes",
]
