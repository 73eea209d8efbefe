"""FLUX.1 [schnell] and [dev]: transformer, CLIP-L and T5 text encoders, VAE, schedules and the pipeline."""
