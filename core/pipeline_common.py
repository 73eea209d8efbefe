"""What every family's pipeline shares: memory options, load info, model defaults, phase peaks, helpers.

FLUX.2's pipeline defined the classes first and still owns them (they stay importable from
core/flux2/pipeline.py); newer families take them from here, so that no family imports another.
"""

from __future__ import annotations

import gc

import mlx.core as mx

from .errors import Cancelled
from .flux2.pipeline import LoadInfo, MemoryOptions, ModelDefaults, PhasePeaks  # noqa: F401 (re-exported)
from .generation import CancelToken
from .quantize import QuantizationReport


def free_buffers() -> None:
    """Let go of a released component's buffers now, not at the next allocation."""
    gc.collect()
    mx.clear_cache()


def precision(reports: list[QuantizationReport]) -> int | str | None:
    """The precision the components' quantized layers ended at: None (none quantized), the bits, or 'mixed'."""
    values = {bits for report in reports for bits in report.layers.values()}
    if not values:
        return None
    return values.pop() if len(values) == 1 else "mixed"


def check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.cancelled:
        raise Cancelled("cancelled")
