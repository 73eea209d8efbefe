"""A compare's results: one row per precision (memory, time, how far its picture moved from full
precision), the report that holds them, its table and its JSON.

Memory figures per precision (MLX allocations, bytes):
- `transformer_bytes`: the transformer's parameters at that precision, exactly as a load from disk
  at that precision gives them.
- `load_peak`: for the full-precision row, the peak while loading from disk. For the others, the peak
  while quantizing in memory, *less* the full-precision weights the quantized transformer does not
  share, which stay resident for the next precision but which a load from disk would not hold
  (measured: the reference's bytes less what the new transformer did not newly allocate);
  `load_peak_measured` is the raw figure. `load_peak_predicted` is core.memory_model's prediction
  for a streamed load from disk at that precision (uniform precisions only).
- `generate_peak`: the peak while generating, less the same resident full-precision weights
  (`generate_peak_measured` is the raw figure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from ..distributed import RankSummary, distributed_section
from ..generation import GenerationSettings
from ..lora_request import lora_requests
from ..memory import format_bytes
from ..metrics import psnr, ssim

COLUMNS = ("precision", "transformer", "load peak", "gen peak", "s/step", "total s", "PSNR dB", "SSIM")
ATTRIBUTE_COLUMN = "attributes"


@dataclass
class PrecisionRow:
    label: str
    transformer_bytes: int
    average_bits: float | None  # over quantized weights (None: full precision)
    load_peak: int
    load_peak_measured: int
    load_peak_predicted: int | None
    load_seconds: float
    generate_peak: int
    generate_peak_measured: int
    step_seconds: list[float]
    total_seconds: float
    psnr: float
    ssim: float | None
    image: Image.Image = field(repr=False)
    attributes: dict[str, bool] | None = None
    quantization: str = ""  # the report's summary
    plan: dict[str, str] | None = None  # for mixed precisions: layer -> spec

    def to_payload(self) -> dict:
        """Every field, exactly, with the picture as an array (core.distributed carries it between ranks)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "image"}
        return {**data, "image": np.asarray(self.image), "image_mode": self.image.mode}

    @classmethod
    def from_payload(cls, data: dict) -> "PrecisionRow":
        data = dict(data)
        image, mode = Image.fromarray(data.pop("image")), data.pop("image_mode")
        return cls(**data, image=image if image.mode == mode else image.convert(mode))

    @property
    def mean_step_seconds(self) -> float:
        return sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else 0.0

    @property
    def attribute_accuracy(self) -> float | None:
        return None if self.attributes is None else sum(self.attributes.values()) / len(self.attributes)

    def cells(self, with_attributes: bool = False) -> list[str]:
        bits = "" if self.average_bits is None or self.label.startswith("q") else f" ({self.average_bits:.2f} b)"
        cells = [self.label + bits, format_bytes(self.transformer_bytes), format_bytes(self.load_peak),
                 format_bytes(self.generate_peak), f"{self.mean_step_seconds:.3f}", f"{self.total_seconds:.2f}",
                 format_psnr(self.psnr), "-" if self.ssim is None else f"{self.ssim:.4f}"]
        if with_attributes:
            cells.append("-" if self.attributes is None
                         else f"{sum(self.attributes.values())}/{len(self.attributes)}")
        return cells

    def to_dict(self) -> dict:
        return {"precision": self.label, "transformer_bytes": self.transformer_bytes,
                "average_bits": self.average_bits, "load_peak": self.load_peak,
                "load_peak_measured": self.load_peak_measured, "load_peak_predicted": self.load_peak_predicted,
                "load_seconds": round(self.load_seconds, 4), "generate_peak": self.generate_peak,
                "generate_peak_measured": self.generate_peak_measured,
                "step_seconds": [round(s, 4) for s in self.step_seconds],
                "mean_step_seconds": round(self.mean_step_seconds, 4), "total_seconds": round(self.total_seconds, 4),
                "psnr": "inf" if math.isinf(self.psnr) else round(self.psnr, 4),
                "ssim": None if self.ssim is None else round(self.ssim, 6), "attributes": self.attributes,
                "attribute_accuracy": self.attribute_accuracy, "quantization": self.quantization,
                "plan": self.plan}


def format_psnr(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


@dataclass
class CompareReport:
    settings: GenerationSettings  # as drawn: steps, guidance, size and the compute dtype resolved
    folder: Path
    text_encoder: str  # its precision: 'q8', or unquantized in the compute dtype ('f32')
    rows: list[PrecisionRow] = field(default_factory=list)
    attributes_checked: bool = False
    seconds: float = 0.0
    ranks: list[RankSummary] = field(default_factory=list)  # what each rank of the job drew
    warnings: list[str] = field(default_factory=list)  # a prompt longer than a text encoder reads

    def table_lines(self) -> list[str]:
        header = list(COLUMNS) + ([ATTRIBUTE_COLUMN] if self.attributes_checked else [])
        body = [r.cells(self.attributes_checked) for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        return [line(header)] + [line(b) for b in body]

    def to_dict(self) -> dict:
        s = self.settings
        return {"model": s.model, "folder": str(self.folder), "prompt": s.prompt,
                "negative_prompt": s.negative_prompt, "seed": s.seed, "steps": s.steps,
                "guidance": s.guidance, "width": s.width, "height": s.height, "dtype": s.dtype,
                "text_encoder": self.text_encoder, "loras": [lora.to_record() for lora in lora_requests(s.loras)],
                "reference_images": [str(path) for path in s.reference_images], "seconds": round(self.seconds, 3),
                "rows": [r.to_dict() for r in self.rows], "warnings": list(self.warnings),
                "notes": {"load_peak": LOAD_PEAK_NOTE, "generate_peak": GENERATE_PEAK_NOTE,
                          "average_bits": "nominal bits per quantized weight; scales and biases add 32/group "
                                          "(0.5 for groups of 64)"},
                **distributed_section(self.ranks)}


LOAD_PEAK_NOTE = ("unquantized: peak while loading from disk. Others: peak while quantizing in memory from the loaded "
                  "full-precision weights, less those weights (a load from disk would not hold them); "
                  "load_peak_predicted: the memory model's streamed load from disk")
GENERATE_PEAK_NOTE = ("peak while generating; for the quantized precisions, less the full-precision weights held "
                      "only for the next precision")


def score(row: PrecisionRow, reference: Image.Image) -> None:
    """PSNR and SSIM of the row's picture against the full-precision one."""
    row.psnr = psnr(row.image, reference)
    row.ssim = ssim(row.image, reference) if min(row.image.size) >= 11 else None
