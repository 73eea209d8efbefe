"""quantbench's engine: MLX diffusion models, quantization and generation, with no UI."""

__version__ = "0.1.0"
