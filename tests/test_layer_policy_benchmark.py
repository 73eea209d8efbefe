"""benchmarks/layer_policy.py: every layer the size rules allow is ranked, the family's kept ones marked, and the
kept share at the released depth is the memory model's."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from quantbench.core.catalog import get_entry  # noqa: E402
from quantbench.core.families.qwen_image21.components import TRANSFORMER_POLICY  # noqa: E402
from quantbench.core.memory_model import component_size  # noqa: E402

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _run(*args) -> dict:
    out = subprocess.run([sys.executable, str(BENCHMARKS / "layer_policy.py"), *args, "--json"], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("component", ["transformer", "text_encoder"])
def test_every_layer_is_ranked_and_the_kept_ones_marked(tiny_qwen_image21, component):
    report = _run("--model", str(tiny_qwen_image21[0]), "--component", component, "--size", "32", "--steps", "1")
    rows = report["rows"]
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    assert all(a["error"] >= b["error"] > 0 for a, b in zip(rows, rows[1:]))
    kept = {row["layer"] for row in rows if row["kept"]}
    if component == "transformer":  # the tiny model's latent projections are below the group size: not ranked
        assert kept == {"time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
                        "modulation.1"}
    else:
        assert not kept and "embed_tokens" in {row["layer"] for row in rows}
    assert report["all_layers_error"] > 0  # errors do not add up in pixels: every layer at once is not their sum


def test_the_kept_share_at_the_released_depth_is_the_memory_models():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from layer_policy import released_share
    finally:
        sys.path.remove(str(BENCHMARKS))
    share = released_share("qwen-image-2.1", TRANSFORMER_POLICY)
    size = component_size(get_entry("qwen-image-2.1").transformer, 4, policy="engine")
    assert share["kept_params"] == sum(size.kept.values()) - size.kept.get("norms, biases, other tensors", 0)
    assert 0 < share["kept_share"] < 0.02
