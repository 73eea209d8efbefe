"""The part of a pipeline every family shares. A family's pipeline subclasses PipelineBase (see
core/family.py).

- model_info.py: what a model folder says about itself (ModelDefaults), what was loaded (LoadInfo),
  what to free and when (MemoryOptions);
- pipeline.py: PipelineBase: the template `load()` and its hooks, components loaded on demand and freed
  on request, one generation's phases, packed latents decoded to pixels, and the x0 previews;
- latents.py: packed latent tokens unpacked for the VAE, and VAE latents packed into tokens;
- releasing.py: letting go of a component's memory when it is released or its load is cancelled.
"""

from .model_info import MAX_SEQUENCE_LENGTH, LoadInfo, MemoryOptions, ModelDefaults, precision
from .latents import pack_latents, unpack_latents
from .pipeline import PipelineBase
from .releasing import free_buffers, freed_when_cancelled

__all__ = ["MAX_SEQUENCE_LENGTH", "LoadInfo", "MemoryOptions", "ModelDefaults", "PipelineBase", "free_buffers",
           "freed_when_cancelled", "pack_latents", "precision", "unpack_latents"]
