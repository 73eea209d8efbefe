"""What every family's pipeline shares: memory options, load info, model defaults, phase peaks, helpers.

FLUX.2's pipeline defined LoadInfo, MemoryOptions and ModelDefaults first and still owns them (they
stay importable from core/flux2/pipeline.py); newer families take them from here, so that no family
imports another. The lifecycle shared by all pipelines, one generation's phases included, is
core/pipeline_base.py.
"""

from __future__ import annotations

from .flux2.pipeline import LoadInfo, MemoryOptions, ModelDefaults  # noqa: F401 (re-exported)
from .pipeline_base import (PhasePeaks, PipelineBase, check_cancel, free_buffers, precision,  # noqa: F401 (re-exported)
                            unpack_latents)
