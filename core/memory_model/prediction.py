"""Prediction: the peak of every phase of a run, and of loading, from the weights and the activations.

Phases and peaks
    encode:  the text encoder and the VAE (+ the transformer unless the encoder is loaded without it, "staged":
             the engine loads the VAE first, so it is there in every mode) + encode activations;
    denoise: transformer + VAE (+ text encoder if kept resident) + prompt features + activations;
    decode:  the same residents + decode activations.
    The generation peak is the largest of the three. Loading peaks, from a bf16 checkpoint:
    "full"     every component in full precision, then quantized copies made before the originals
               are released: sum(full) + sum(quantized) (the worst case of loading bf16 first; with
               float32 compute, plus the bf16 copies the engine quantizes from);
    "lazy"     lazy load, quantize, then one evaluation of everything: every full-precision weight
               read before the first is released, sum(full) + one quantized block (MLX's evaluation
               order puts the measured peak between 70% and 110% of this);
    "streamed" quantized (or cast to the compute dtype) as it is read: sum(final) + one block as the
               checkpoint stores it. quantbench's engine loads this way (it materializes one layer at a
               time, so this is an upper bound; the VAE is loaded first, with the text encoder when "staged");
    "prequantized" a saved quantized copy: sum(final).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import CatalogEntry, Precision, precision_label
from ..errors import InvalidRequest
from ..family import PromptTokens
from ..blocks import elementwise_kernel
from ..quant import dense, kept_layers, tile_kernel
from ..quant.dense import slice_bytes
from ..quant.calibration import needs_calibration
from .activations import (PIXELS_PER_TOKEN, backend_profile, decode_bytes, denoise_bytes, image_tokens,
                          prompt_feature_bytes, reference_encode_bytes, text_encode_bytes, text_sequence_length)
from .calibration import calibration_bytes, calibration_disk_bytes
from .weights import ComponentSize, component_size

GB = 1e9
GiB = 2 ** 30
MiB = 2 ** 20
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


TEXT_ENCODER_MODES = ("resident", "evict", "staged")
LOAD_MODES = ("full", "lazy", "streamed", "prequantized")


@dataclass(frozen=True)
class Plan:
    """How a model is run: precisions, size, and the memory-saving measures taken."""

    transformer_bits: Precision = None
    text_encoder_bits: Precision = None
    width: int = 1024
    height: int = 1024
    text_encoder: str = "resident"  # kept loaded | freed after encoding | loaded alone (with the VAE), freed before the transformer
    vae_tiling: bool = False
    tile_size: int = 512
    load: str = "streamed"  # how weights reach memory (see the module docstring)
    dtype: str = "bfloat16"
    backend: str = "metal"
    policy: str = "engine"
    batch: int | None = None  # None: 2 when the model's default is true CFG (prompt and negative batched), else 1
    transformer_for_decode: bool = True  # False: freed before the VAE decode (the engine's --low-memory)
    ranks: int = 1  # tensor-parallel: the transformer split across this many ranks (what one rank holds)
    keep_dequantized: float = 0.0  # CPU: bytes of the transformer's quantized layers also kept dense (inf: all)
    # The prompts' own tokens where the run's prompts are known and its family runs each at its own length
    # (PipelineBase.prompt_tokens); None: the model's longest prompt, a bound for those families.
    prompt_tokens: PromptTokens | None = None
    # CPU: the quantized layers' products dequantize inside, tile by tile (quant/tile_kernel.py), holding no
    # dense weight in MLX's memory; None: as this machine's engine would run them.
    tile_kernel: bool | None = None
    # CPU: the blocks' activations, norms and rotary embedding run in the elementwise kernel
    # (blocks/elementwise_kernel.py), which evaluates its inputs: a step holds one block's arrays at a time, quantized
    # or not; None: as this machine's engine would run them.
    elementwise_kernel: bool | None = None
    # Reference images (width, height as they enter the model): their tokens join every denoising step, and each is
    # read by the VAE's encoder, loaded for that in the encode phase.
    reference_sizes: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        if self.text_encoder not in TEXT_ENCODER_MODES:
            raise InvalidRequest(f"text encoder mode '{self.text_encoder}': choose {', '.join(TEXT_ENCODER_MODES)}")
        if self.load not in LOAD_MODES:
            raise InvalidRequest(f"load mode '{self.load}': choose one of {', '.join(LOAD_MODES)}")
        if self.dtype not in DTYPE_BYTES:
            raise InvalidRequest(f"dtype '{self.dtype}': choose one of {', '.join(DTYPE_BYTES)}")
        for name, value in (("width", self.width), ("height", self.height)):
            if value % PIXELS_PER_TOKEN or not 16 <= value <= 8192:
                raise InvalidRequest(f"{name} {value}: use a multiple of 16 between 16 and 8192")
        if not 1 <= self.ranks <= 1024:
            raise InvalidRequest(f"{self.ranks} ranks: give 1 to 1024")
        for width, height in self.reference_sizes:
            if width % PIXELS_PER_TOKEN or height % PIXELS_PER_TOKEN or not 16 <= min(width, height):
                raise InvalidRequest(f"reference image {width}x{height}: use multiples of 16, at least 16")
        if self.tile_size % PIXELS_PER_TOKEN or self.tile_size < 64:
            raise InvalidRequest(f"tile size {self.tile_size}: use a multiple of 16, at least 64")

    def describe(self) -> str:
        parts = [f"transformer {precision_label(self.transformer_bits, self.dtype)}"]
        if self.text_encoder_bits is not None:
            parts.append(f"text encoder {precision_label(self.text_encoder_bits, self.dtype)}")
        if self.text_encoder != "resident":
            parts.append({"evict": "text encoder freed after encoding",
                          "staged": "text encoder loaded alone"}[self.text_encoder])
        if self.vae_tiling:
            parts.append(f"tiled decode ({self.tile_size} px)")
        if not self.transformer_for_decode:
            parts.append("transformer freed before the decode")
        if self.ranks > 1:
            parts.append(f"transformer split across {self.ranks} ranks")
        if self.reference_sizes:
            parts.append(f"{len(self.reference_sizes)} reference image{'s' * (len(self.reference_sizes) > 1)}")
        if self.keep_dequantized:
            parts.append("dequantized weights kept" + ("" if self.keep_dequantized == float("inf") else
                                                       f" (up to {self.keep_dequantized / 1024 ** 3:g} GB)"))
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"transformer": precision_label(self.transformer_bits, self.dtype),
                "text_encoder": precision_label(self.text_encoder_bits, self.dtype), "width": self.width,
                "height": self.height, "text_encoder_mode": self.text_encoder, "vae_tiling": self.vae_tiling,
                "tile_size": self.tile_size, "load": self.load, "dtype": self.dtype, "backend": self.backend,
                "policy": self.policy, **({"ranks": self.ranks} if self.ranks > 1 else {}),
                **({"keep_dequantized": "all" if self.keep_dequantized == float("inf") else self.keep_dequantized}
                   if self.keep_dequantized else {}),
                **({"reference_sizes": [list(size) for size in self.reference_sizes]} if self.reference_sizes else {}),
                **({"prompt_tokens": {"encoder": self.prompt_tokens.encoder,
                                      "transformer": self.prompt_tokens.transformer}} if self.prompt_tokens else {})}


@dataclass(frozen=True)
class Prediction:
    entry_id: str
    plan: Plan
    components: tuple[ComponentSize, ...]
    encode_activations: int
    denoise_activations: int
    decode_activations: int
    prompt_features: int
    phases: dict  # phase -> peak bytes
    load_peaks: dict  # load mode -> peak bytes
    kept_dequantized: int = 0  # dense copies of quantized transformer layers (Plan.keep_dequantized), in the phases
    calibration_disk: int = 0  # temporary disk bytes a calibration writes (0: none)
    dequantizing: int = 0  # of the denoise activations, the weight the CPU's dense path dequantizes whole

    @property
    def weights(self) -> int:
        return sum(c.nbytes for c in self.components)

    def component_bytes(self, role_prefix: str) -> int:
        return sum(c.nbytes for c in self.components if c.role.startswith(role_prefix))

    @property
    def generation_peak(self) -> int:
        return max(self.phases.values())

    @property
    def bottleneck(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def load_peak(self) -> int:
        return self.load_peaks[self.plan.load]

    @property
    def peak(self) -> int:
        """The most this run holds at once, loading included."""
        return max(self.generation_peak, self.load_peak)

    def to_dict(self) -> dict:
        return {"model": self.entry_id, "plan": self.plan.to_dict(),
                "components": [c.to_dict() for c in self.components], "weights_bytes": self.weights,
                "activations": {"encode": self.encode_activations, "denoise": self.denoise_activations,
                                "decode": self.decode_activations, "prompt_features": self.prompt_features},
                "kept_dequantized_bytes": self.kept_dequantized,
                "phases": dict(self.phases), "generation_peak": self.generation_peak,
                "bottleneck": self.bottleneck, "load_peaks": dict(self.load_peaks), "load_peak": self.load_peak,
                "peak": self.peak, **({"calibration_disk": self.calibration_disk} if self.calibration_disk else {})}


def default_dtype(backend: str) -> str:
    """The engine's default compute dtype: bfloat16 on a GPU, float32 on the CPU (core/generation.py)."""
    return "float32" if backend == "cpu" else "bfloat16"


def predict(entry: CatalogEntry, plan: Plan | None = None) -> Prediction:
    """Memory of running `entry` with `plan`: weights, activations, and the peak of every phase."""
    if not entry.components:
        raise InvalidRequest(f"{entry.id}: not shipped yet, nothing to predict")
    plan = plan or Plan()
    backend = backend_profile(plan.backend)
    dtype_bytes = DTYPE_BYTES[plan.dtype]
    batch = plan.batch or (2 if entry.true_cfg and entry.default_guidance > 1 else 1)
    sizes = []
    for c in entry.components:
        bits = plan.transformer_bits if c.role == "transformer" else (
            plan.text_encoder_bits if c.role.startswith("text_encoder") else None)
        sizes.append(component_size(c, bits, dtype_bytes, plan.policy, entry.text_encoder_layers, plan.ranks))
    sizes = tuple(sizes)
    te = sum(s.nbytes for s in sizes if s.role.startswith("text_encoder"))
    rest = sum(s.nbytes for s in sizes if not s.role.startswith("text_encoder"))
    vae = sum(s.nbytes for s in sizes if s.role == "vae")  # loaded first: with the text encoder even when "staged"
    kept = kept_dequantized_bytes(sizes, plan, dtype_bytes)
    rest += kept  # held with the transformer, in every phase that holds it
    transformer = sum(s.nbytes for s in sizes if s.role == "transformer") + kept
    dense = dense_transient_bytes(sizes, plan, dtype_bytes)
    prompt = plan.prompt_tokens
    encode_batch = (prompt.encoder_batch if prompt is not None else None) or batch
    encode = sum(text_encode_bytes(c, encode_batch, text_sequence_length(entry, c, prompt), dtype_bytes, backend)
                 for c in entry.text_encoders)
    features = prompt_feature_bytes(entry, batch, dtype_bytes, prompt)
    references = sum(image_tokens(w, h) for w, h in plan.reference_sizes)
    denoise = denoise_bytes(entry, plan.width, plan.height, batch, dtype_bytes, backend, prompt,
                            runs_layer_by_layer(sizes, plan, dtype_bytes), uses_elementwise_kernel(plan),
                            references) + dense
    decode = decode_bytes(entry, plan.width, plan.height, dtype_bytes, backend,
                          plan.tile_size if plan.vae_tiling else None)
    resident_te = te if plan.text_encoder == "resident" else 0
    phases = {
        # the references are read after the prompt, beside what stays (the text encoder is freed when not resident)
        "encode": te + (vae if plan.text_encoder == "staged" else rest) + features
        + max(encode, reference_encode_bytes(entry, plan.reference_sizes, dtype_bytes, backend) - te + resident_te),
        "denoise": rest + resident_te + features + denoise,
        "decode": rest - (0 if plan.transformer_for_decode else transformer) + resident_te + features + decode,
    }
    disk = 0
    if plan.load != "prequantized" and needs_calibration(plan.transformer_bits):
        transformer = next(s for s in sizes if s.role == "transformer")
        phases["calibration"] = calibration_bytes(entry, transformer, rest - kept - transformer.nbytes + resident_te
                                                  + features, dtype_bytes, batch, backend)
        disk = calibration_disk_bytes(entry, dtype_bytes, batch)
    return Prediction(entry.id, plan, sizes, encode, denoise, decode, features, phases,
                      _load_peaks(sizes, plan.text_encoder == "staged"), kept_dequantized=kept, calibration_disk=disk,
                      dequantizing=dense)


def kept_dequantized_bytes(sizes: tuple[ComponentSize, ...], plan: Plan, dtype_bytes: int) -> int:
    """The dense copies `--keep-dequantized` keeps: the engine's rule (quant.kept_layers) over the transformer's
    quantized Linear layers at the compute dtype. Only the CPU's dense path keeps them."""
    dense = _dense_bytes(sizes, dtype_bytes)
    return sum(dense[path] for path in _kept_paths(sizes, plan, dtype_bytes))


def _dense_bytes(sizes: tuple[ComponentSize, ...], dtype_bytes: int) -> dict:
    return {path: weights * dtype_bytes for s in sizes if s.role == "transformer" for path, weights in s.dense_layers}


def _kept_paths(sizes: tuple[ComponentSize, ...], plan: Plan, dtype_bytes: int) -> list[str]:
    if not plan.keep_dequantized or plan.backend != "cpu":
        return []
    return kept_layers(_dense_bytes(sizes, dtype_bytes), plan.keep_dequantized)


# Bytes a weight of the levels the dense path unpacks before scaling them (quant/dense.py dequantize_rows): at
# 4 bits a byte each (_nibbles_to_bytes), at 2 bits a uint32 each (shifted out of the words); 8 bits are read
# as the packed bytes themselves, other widths go through mx.dequantize straight to the dtype.
LEVEL_BYTES = {2: 4, 4: 1}


def dense_transient_bytes(sizes: tuple[ComponentSize, ...], plan: Plan, dtype_bytes: int) -> int:
    """What the CPU's dense path (quant/dense.py) adds to a denoising step's activations.

    A quantized layer whose dense weight fits one slice (DENSE_SLICE_BYTES, DENSE_SLICE_MIN_ROWS) is dequantized
    whole, lazily, inside the step's graph: while its product runs, its dense weight is alive (and its unpacked
    levels, LEVEL_BYTES); the largest such layer adds to the step's peak. A transformer with a layer cut in
    slices adds nothing: a sliced layer evaluates its input and each slice's product as it goes, so the step
    runs layer by layer and lets go of more of its activations than its slices hold (a Klein-structured model at
    width 0.125, 64x64 px: 27 MiB of activations at 4 bits against 35 MiB unquantized; at width 0.0625, whose
    layers all fit one slice, 26.6 MiB against 23.8, the largest dense weight being 2.25 MiB). The tile kernel
    adds nothing either: it evaluates its input, and its tiles are outside MLX's memory (a few MB a thread)."""
    if plan.backend != "cpu" or uses_tile_kernel(plan):
        return 0
    kept = set(_kept_paths(sizes, plan, dtype_bytes))
    shapes = [shape for s in sizes if s.role == "transformer"
              for (path, _), shape in zip(s.dense_layers, s.dense_shapes) if path not in kept]
    if any(slice_bytes(in_dim, out_dim, dtype_bytes) < in_dim * out_dim * dtype_bytes for in_dim, out_dim, _ in shapes):
        return 0
    return max((in_dim * out_dim * (dtype_bytes + LEVEL_BYTES.get(bits, 0)) for in_dim, out_dim, bits in shapes),
               default=0)


def runs_layer_by_layer(sizes: tuple[ComponentSize, ...], plan: Plan, dtype_bytes: int) -> bool:
    """Whether a denoising step runs a layer at a time: the CPU's tile kernel runs the transformer's quantized
    layers, and each evaluates its input before its product (activations/transformer_per_token). Not where the
    transformer has no quantized layer, or every one is kept dense (--keep-dequantized: its product is lazy)."""
    if plan.backend != "cpu" or not uses_tile_kernel(plan):
        return False
    quantized = {path for s in sizes if s.role == "transformer" for path, _ in s.dense_layers}
    return bool(quantized - set(_kept_paths(sizes, plan, dtype_bytes)))


def uses_tile_kernel(plan: Plan) -> bool:
    """Whether the plan's quantized products run in the tile kernel (float32 inputs on the CPU, where it builds)."""
    if plan.tile_kernel is not None:
        return plan.tile_kernel
    return plan.dtype == "float32" and dense.TILE_KERNEL and tile_kernel.expected()


def uses_elementwise_kernel(plan: Plan) -> bool:
    """Whether the plan's denoising step runs its activations, norms and rotary embedding in the CPU's elementwise
    kernel (float32 on the CPU, where it builds)."""
    if plan.elementwise_kernel is not None:
        return plan.elementwise_kernel
    return plan.backend == "cpu" and plan.dtype == "float32" and elementwise_kernel.KERNEL and elementwise_kernel.expected()


def _load_peaks(sizes: tuple[ComponentSize, ...], staged: bool) -> dict:
    def group_peaks(group):
        final = sum(s.nbytes for s in group)
        quantized = [s for s in group if s.bits is not None]
        largest_full = max((s.largest_block_full for s in group), default=0)  # quantized, or cast, as read
        largest_final = max((s.largest_block_final for s in quantized), default=0)
        full = sum(s.full_bytes for s in group)
        return {"full": full + sum(s.nbytes + s.cast_bytes for s in quantized),
                "lazy": full + largest_final,
                "streamed": final + largest_full,
                "prequantized": final}

    groups = ([[s for s in sizes if s.role.startswith("text_encoder") or s.role == "vae"],
               [s for s in sizes if not s.role.startswith("text_encoder")]] if staged else [list(sizes)])
    peaks = [group_peaks(g) for g in groups if g]
    return {mode: max(p[mode] for p in peaks) for mode in LOAD_MODES}
