"""The numbers of each published component's config.json that size it, copied from the repositories'
`*/config.json` (collected in the project's reference notes on models), and the parameters the downloads
hold that the engine never builds."""

from __future__ import annotations


def _flux2_transformer(layers: int, single: int, heads: int, joint: int, guidance: bool) -> dict:
    return {"in_channels": 128, "num_layers": layers, "num_single_layers": single, "attention_head_dim": 128,
            "num_attention_heads": heads, "joint_attention_dim": joint, "timestep_guidance_channels": 256,
            "mlp_ratio": 3.0, "guidance_embeds": guidance, "patch_size": 1}


KLEIN_4B_TRANSFORMER = _flux2_transformer(5, 20, 24, 7680, False)
KLEIN_9B_TRANSFORMER = _flux2_transformer(8, 24, 32, 12288, False)
FLUX2_DEV_TRANSFORMER = _flux2_transformer(8, 48, 48, 15360, True)

QWEN3_4B = {"vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True}
QWEN3_8B = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False}
# Mistral-Small-3.x-24B's language model (the folder also holds a ~0.44B vision tower, not used for text).
MISTRAL_SMALL_24B = {"model_type": "mistral", "vocab_size": 131072, "hidden_size": 5120, "intermediate_size": 32768,
                     "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "head_dim": 128, "tie_word_embeddings": False}
MISTRAL_VISION_PARAMS = 440_000_000
# Qwen2.5-VL-7B's language model (plus a ~0.676B vision tower, not used for text-to-image).
QWEN25_VL_7B = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                "num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128, "attention_bias": True,
                "tie_word_embeddings": False}
QWEN25_VL_VISION_PARAMS = 676_000_000
T5_XXL_ENCODER = {"vocab_size": 32128, "d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
                  "d_kv": 64, "relative_attention_num_buckets": 32, "feed_forward_proj": "gated-gelu"}
CLIP_L_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "max_position_embeddings": 77}

FLUX1_TRANSFORMER = {"in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
                     "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                     "mlp_ratio": 4.0}
# Tongyi-MAI/Z-Image-Turbo's and Tongyi-MAI/Z-Image's transformer/config.json (the same architecture).
Z_IMAGE_TRANSFORMER = {"in_channels": 16, "dim": 3840, "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30,
                       "n_kv_heads": 30, "qk_norm": True, "cap_feat_dim": 2560, "axes_dims": (32, 48, 48),
                       "all_patch_size": (2,), "all_f_patch_size": (1,)}
QWEN_IMAGE_TRANSFORMER = {"in_channels": 64, "out_channels": 16, "patch_size": 2, "num_layers": 60,
                          "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                          "mlp_ratio": 4.0}

FLUX2_VAE = {"latent_channels": 32, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
             "norm_num_groups": 32, "mid_block_add_attention": True, "use_post_quant_conv": True,
             "use_quant_conv": True}
FLUX1_VAE = {"latent_channels": 16, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
             "norm_num_groups": 32, "mid_block_add_attention": True, "use_post_quant_conv": False,
             "use_quant_conv": False}
# The AutoencoderKL encoders (and FLUX.2's quant_conv), in the download only: diffusers' count of the whole
# VAE less the decoder the engine builds (AutoencoderKLFlux2 84,046,115 + 256 batch-norm statistics;
# AutoencoderKL 83,819,683).
FLUX2_VAE_ENCODER_PARAMS = 34_425_856
FLUX1_VAE_ENCODER_PARAMS = 34_274_208
# AutoencoderKLQwenImage (Wan-style causal 3-D convolutions): base_dim 96, dim_mult (1, 2, 4, 4). The
# engine decodes one frame, so it keeps one temporal slice of each 3-D kernel; the download holds the
# whole VAE, 126,892,531 parameters in diffusers' count.
QWEN_IMAGE_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": (1, 2, 4, 4), "num_res_blocks": 2,
                  "temperal_downsample": (False, True, True)}
QWEN_IMAGE_VAE_DOWNLOAD_PARAMS = 126_892_531
QWEN_IMAGE_VAE_ENGINE_PARAMS = 25_291_955  # its single-frame decoder and post_quant_conv


# Qwen-Image 2.1 (QwenImage21Transformer2DModel's defaults, the released config): 32 single-stream blocks.
QWEN_IMAGE21_TRANSFORMER = {"in_channels": 64, "out_channels": 64, "patch_size": 1, "num_layers": 32,
                            "attention_head_dim": 128, "num_attention_heads": 32, "context_in_dim": 4096,
                            "mlp_ratio": 3}
# Qwen3-VL-8B's language model (its config.json nests it under text_config), read before its final norm.
QWEN3_VL_8B = {"text_config": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
                               "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                               "head_dim": 128, "rms_norm_eps": 1e-6},
               "tie_word_embeddings": False}
# In the download, never built: the 0.58B vision tower (transformers' count) and the final norm.
QWEN3_VL_8B_UNBUILT_PARAMS = 576_388_336 + 4096
# AutoencoderKLQwenImage21 (Wan 2.2-style residual VAE, 16x, RGBA): decoder widths 144 x (1, 2, 4, 8, 8). The
# engine builds the single-frame decoder and post_quant_conv (253,070,484: diffusers' decoder less its temporal
# convolutions, never used on one frame); the download holds the whole VAE, 337,740,404 in diffusers' count.
QWEN_IMAGE21_VAE = {"base_dim": 96, "decoder_base_dim": 144, "z_dim": 64, "dim_mult": (1, 2, 4, 8, 8),
                    "num_res_blocks": 2, "temperal_downsample": (False, True, True, True), "out_channels": 4,
                    "is_residual": True}
QWEN_IMAGE21_VAE_DOWNLOAD_PARAMS = 337_740_404
QWEN_IMAGE21_VAE_ENGINE_PARAMS = 253_070_484
