"""The FLUX.2 family: transformer, Qwen3 text encoder, VAE, scheduler and weight mapping."""
