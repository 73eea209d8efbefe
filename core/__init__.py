"""quantbench's engine: MLX diffusion models, quantization and generation, with no UI."""

# Before anything imports mlx.core: a fast BLAS under MLX's CPU backend (see cpu_blas.py).
from .cpu_blas import load_fast_blas

load_fast_blas()

__version__ = "0.1.0"
