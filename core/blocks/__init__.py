"""Model blocks several families share, as diffusers shares them: a family folder (core/families/<family>)
holds only what is its own and builds the rest from here.

- rope: RoPE tables over several position axes, applied to interleaved pairs; position-id grids.
- attention: scaled dot-product attention over heads; the joint [text, image] attention of MMDiT blocks; a
  parallel block's attention output beside its MLP's activation.
- fast_math: exp and the activations built on it, fast on MLX's CPU.
- attention_kernel, elementwise_kernel (.c beside them, cephes_exp.h shared): the CPU's C kernels for
  attention and for the activations, per-head norms with RoPE and modulated norms, on every core.
- modulation: LayerNorm without affine, shift/scale modulation, the modulated output norm.
- embeddings: the sinusoidal timestep embedding and its Linear-SiLU-Linear projection.
- feed_forward: the GELU (tanh) MLP.
- decoder_lm: the decoder-only language model (Qwen3, Qwen2.5-VL's language model, Mistral) run as a
  prompt encoder, with its config parsing and checkpoint-key rules.
- autoencoder_kl: the decoder half of diffusers' AutoencoderKL.
- vae: the tiled decode any VAE can use.
- tokenizer_files: reading and writing Hugging Face tokenizer folders.
- chat_tokenizer: prompts rendered with a tokenizer folder's chat template, tokenized to a fixed length.

Parameter names follow the diffusers / transformers checkpoint keys, so weights load by name.
"""
