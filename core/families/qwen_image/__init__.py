"""Qwen-Image: the QwenImageTransformer2DModel denoiser, the Qwen2.5-VL text encoder and the causal-3D VAE, in MLX."""
