"""At the real FLUX.1 sizes, our modules have exactly the reference's parameter names and shapes.

Nothing is allocated: the reference models are built on torch's meta device and ours stay lazy
(MLX evaluates a parameter only when it is used), so this checks the full 12B layout in a second.
"""

import numpy as np
import pytest
from mlx.utils import tree_flatten

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from quantbench.core.families.flux1.clip import CLIPTextEncoder  # noqa: E402
from quantbench.core.families.flux1.t5 import T5Encoder  # noqa: E402
from quantbench.core.families.flux1.transformer import Flux1Transformer  # noqa: E402
from quantbench.core.families.flux1.vae import Flux1VAE  # noqa: E402

# The config.json files of black-forest-labs/FLUX.1-dev and -schnell (see shared/reference/models.md).
TRANSFORMER = dict(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                   joint_attention_dim=4096, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2)
T5_XXL = dict(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, tie_word_embeddings=False)
VAE = dict(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)


def _ours(module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(array.shape) for name, array in tree_flatten(module.parameters())}


def _reference(build) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build()
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("guidance_embeds", [False, True], ids=["schnell", "dev"])
def test_transformer_layout(guidance_embeds):
    config = {**TRANSFORMER, "guidance_embeds": guidance_embeds}
    ours = _ours(Flux1Transformer.from_config(config))
    assert ours == _reference(lambda: diffusers.FluxTransformer2DModel(**config))
    params = sum(int(np.prod(s)) for s in ours.values())
    assert 11.8e9 < params < 12.0e9


def test_clip_l_layout():
    expected = _reference(lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_L)))
    assert _ours(CLIPTextEncoder.from_config(CLIP_L)) == expected


def test_t5_xxl_layout():
    expected = _reference(lambda: transformers.T5EncoderModel(transformers.T5Config(**T5_XXL)))
    expected.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight, not saved
    ours = _ours(T5Encoder.from_config(T5_XXL))
    assert ours == expected
    assert 4.7e9 < sum(int(np.prod(s)) for s in ours.values()) < 4.8e9


def test_vae_decoder_layout():
    expected = _reference(lambda: diffusers.AutoencoderKL(**VAE))
    expected = {k: (s[0], *s[2:], s[1]) if len(s) == 4 else s for k, s in expected.items()  # NHWC conv weights
                if not k.startswith(("encoder.", "quant_conv."))}
    assert _ours(Flux1VAE.from_config(VAE)) == expected
