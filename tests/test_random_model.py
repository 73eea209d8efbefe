"""random-model writes whole, real-layout models one tensor at a time (issue 13 item 10, issue 19): diffusers
loads every component with no missing or unexpected weight, the VAE's encoder half included, and writing one
never holds more than a small part of it in memory."""

import subprocess
import sys

import pytest

from quantbench.core.random_model import write_random_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_random_model(tmp_path_factory.mktemp("random") / "tiny", "tiny")


@pytest.mark.parametrize("component,load", [
    ("vae", lambda d, path: d.AutoencoderKLFlux2.from_pretrained(path, output_loading_info=True)),
    ("transformer", lambda d, path: d.Flux2Transformer2DModel.from_pretrained(path, output_loading_info=True)),
])
def test_diffusers_loads_every_weight_of_a_random_model(tiny, component, load):
    diffusers = pytest.importorskip("diffusers")
    _, info = load(diffusers, tiny / component)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_transformers_loads_the_random_text_encoder(tiny):
    transformers = pytest.importorskip("transformers")
    _, info = transformers.Qwen3ForCausalLM.from_pretrained(tiny / "text_encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the LM head is tied to the embeddings


def test_the_vae_encoder_encodes_what_the_decoder_decodes_in_shape(tiny):
    """The encoder half is real enough to run: a picture goes in, latents of the decoder's shape come out."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKLFlux2.from_pretrained(tiny / "vae")
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert tuple(latents.shape) == (1, vae.config.latent_channels, 64 // 8, 64 // 8)


WRITE_AND_REPORT_PEAK = """
import sys, mlx.core as mx
from quantbench.core.random_model import write_random_model
mx.reset_peak_memory()
write_random_model(sys.argv[1], "klein-4b", width_scale=0.1)
print(mx.get_peak_memory())
"""


def test_writing_a_random_model_holds_one_tensor_at_a_time(tmp_path):
    # In a process of its own: MLX's peak counter is the whole process's, and work another test left
    # running on a thread of this one would count against the writer.
    done = subprocess.run([sys.executable, "-c", WRITE_AND_REPORT_PEAK, str(tmp_path / "klein")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split()[-1])
    written = sum(f.stat().st_size for f in (tmp_path / "klein").rglob("*.safetensors"))
    assert written > 100 << 20 and peak < written / 10


def test_under_mlx_launch_the_first_rank_on_each_host_writes_and_the_others_do_not(tmp_path, monkeypatch, capsys):
    """`mlx.launch -n 2 -- quantbench random-model --out M`: both ranks wrote M, and the second said
    "M already exists" (exit 2) after the first had written it. Now the first rank on each host writes (each host
    needs the model at the same path) and the others say so and end at once, as rank 1 of 2 on one host here."""
    import json
    from quantbench.cli.main import main
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["127.0.0.1:5000"], ["127.0.0.1:5001"], ["10.0.0.2:5000"]]))
    monkeypatch.setenv("MLX_HOSTFILE", str(hostfile))
    out = tmp_path / "model"
    monkeypatch.setenv("MLX_RANK", "1")  # second on 127.0.0.1
    assert main(["random-model", "--out", str(out)]) == 0
    assert capsys.readouterr().err == f"[rank 1] {out} is written by the first rank on this host\n"
    assert not out.exists()
    for rank in ("0", "2"):  # first on 127.0.0.1, first (and only) on 10.0.0.2
        monkeypatch.setenv("MLX_RANK", rank)
        assert main(["random-model", "--out", str(out), "--overwrite"]) == 0
        assert f"wrote {out}" in capsys.readouterr().out and (out / "model_index.json").is_file()
