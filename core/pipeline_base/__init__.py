"""The part of a pipeline every family shares. A family's pipeline subclasses PipelineBase (see
core/family.py).

- model_info.py: what a model folder says about itself (ModelDefaults), what was loaded (LoadInfo),
  what to free and when (MemoryOptions);
- pipeline.py: PipelineBase: the template `load()` and its hooks, components loaded on demand and freed
  on request, one generation's phases, packed latents decoded to pixels, and the x0 previews.
"""

from .model_info import MAX_SEQUENCE_LENGTH, LoadInfo, MemoryOptions, ModelDefaults, precision
from .pipeline import PipelineBase, free_buffers, freed_when_cancelled, unpack_latents

__all__ = ["MAX_SEQUENCE_LENGTH", "LoadInfo", "MemoryOptions", "ModelDefaults", "PipelineBase", "free_buffers",
           "freed_when_cancelled", "precision", "unpack_latents"]
