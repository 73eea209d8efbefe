"""Quantization's one home: specs, the layer policy, the methods, byte costs, applying them, saved records.

    spec.py     precisions as users write them (BITS[:METHOD[:GROUP]]), bits and group sizes allowed
    policy.py   which layers a family keeps in full precision (LayerPolicy)
    methods/    one file per method (rtn, mse, hqq, ...): float weight -> MLX's affine layout
    affine.py   the arithmetic the methods share (groups, codes, least-squares fits)
    packing.py  MLX's packed-code layout
    cost.py     the exact bytes of a quantized weight at any bits and group size
    layers.py   quantizing one layer, or a copy of one; layer paths
    model.py    quantizing a component in place, its report, casting and layer-by-layer evaluation
    dense.py    the dense CPU path (dequantize, then a BLAS matmul)
    tile_kernel.py, .c  the CPU product with the dequantization inside, tile by tile (built with the C compiler)
    saved.py    what a saved model records in its safetensors metadata, and the checks on loading it
"""

from .cost import SCALE_BYTES, SCALE_DTYPE, bits_per_weight, overhead_bits, quantized_weight_bytes
from .dense import (DenseQuantizedLinear, dequantize_weight, dequantized_budget, keep_dequantized, kept_layers, quantized_matmul_kind,
                    use_dense_matmul)
from .layers import (module_at, parent_and_module, quantize_layer, quantize_structure, quantize_weight,
                     quantized_copy, replace_layer, set_module)
from .methods import LayerStats, Method, QuantizedWeight, all_methods, get_method, method_names
from .model import (Precision, QuantizationReport, cast_full_precision, count_parameters, evaluate_in_units,
                    layer_specs, model_nbytes, precision_label, quantize_model, require_full_precision)
from .policy import FULL, KeepRule, LayerPolicy, candidates, is_quantized
from .spec import (DEFAULT_METHOD, GROUP_SIZE, GROUP_SIZES, SPEC_HELP, SUPPORTED_BITS, Choices, MethodChoice,
                   UNQUANTIZED, QuantSpec, as_spec, choices, is_full_precision, menu_specs, parse_data_free_spec, parse_method_suffix,
                   parse_spec, parse_text_encoder_spec)
