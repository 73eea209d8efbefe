"""Malformed LoRA files: hypothesis mutates a LoRA's safetensors header (names, shapes, dtypes, offsets), its PEFT
metadata and its length; reading it and checking it against the built-in model must then either work or refuse
in one line (a QuantbenchError), never another exception, and a LoRA that passes draws a picture.

The examples are derandomized (the same corpus on every run); raise FUZZ_EXAMPLES to search more, and set
FUZZ_RANDOM=1 to draw a new corpus."""

import json
import os
import struct
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lora_files import linear_layers, lora_tensors, write_lora  # noqa: E402
from quantbench.core.builtin import builtin_model_path  # noqa: E402
from quantbench.core.errors import QuantbenchError  # noqa: E402
from quantbench.core.lora import read_lora  # noqa: E402
from quantbench.core.pipelines import check_model_loras, load_pipeline  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))  # of the 60, about a quarter are used, the rest refused
MODEL = builtin_model_path("demo-turbo")
odd_values = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, -1, 1, 2, 3, 2**63, "two", "", "BF16", "I8"]),
    st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(-3, 70_000), max_size=3),
    st.dictionaries(st.sampled_from(["lora_A", ".*", "[", "to_q"]), st.integers(-2, 9), max_size=2))
key_edits = st.sampled_from(["lora_A", "lora_B", "lora_down", "alpha", "transformer.", "diffusion_model.",
                             "lora_unet_", "weight", ".lokr_w1", "", "..", "lora_A.default"])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    tensors = lora_tensors(linear_layers(MODEL, count=3), rank=2, alpha=4.0)
    return write_lora(tmp_path_factory.mktemp("lora") / "pristine.safetensors", tensors,
                      {"lora_alpha": 8, "r": 2, "alpha_pattern": {}})


def _split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + size]), data[8 + size:]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@st.composite
def mutations(draw):
    return draw(st.lists(st.one_of(
        st.tuples(st.just("rename"), st.integers(0, 20), key_edits, key_edits),
        st.tuples(st.just("field"), st.integers(0, 20), st.sampled_from(["shape", "dtype", "data_offsets"]),
                  odd_values),
        st.tuples(st.just("drop"), st.integers(0, 20)),
        st.tuples(st.just("metadata"), st.sampled_from(["lora_alpha", "r", "alpha_pattern", "use_rslora", "rank_pattern"]),
                  odd_values),
        st.tuples(st.just("truncate"), st.integers(0, 400))), min_size=1, max_size=3))


def _mutated(pristine: Path, steps, out: Path) -> Path:
    header, body = _split(pristine)
    metadata = header.pop("__metadata__")
    adapter = json.loads(metadata["lora_adapter_metadata"])
    names = sorted(header)
    for step in steps:
        kind = step[0]
        if kind == "rename":
            old = names[step[1] % len(names)]
            if old in header and step[2] in old:
                header[old.replace(step[2], step[3], 1)] = header.pop(old)
        elif kind == "field":
            name = names[step[1] % len(names)]
            if name in header:
                header[name][step[2]] = step[3]
        elif kind == "drop":
            header.pop(names[step[1] % len(names)], None)
        elif kind == "metadata":
            adapter[step[1]] = step[2]
        else:
            body = body[: max(0, len(body) - step[1])]
    metadata["lora_adapter_metadata"] = json.dumps(adapter)
    out.write_bytes(_join({"__metadata__": metadata, **header}, body))
    return out


@settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=mutations())
def test_a_mutated_lora_is_used_or_refused_in_one_line(pristine, tmp_path, steps):
    path = _mutated(pristine, steps, tmp_path / "mutated.safetensors")
    try:
        read_lora(path)
        check_model_loras(MODEL, [str(path)])
    except QuantbenchError as refusal:
        assert "\n" not in str(refusal) and str(refusal)
        return
    pipeline = load_pipeline(MODEL, allow_download=False, loras=[str(path)])
    result = pipeline.generate("a red ring", steps=1, width=32, height=32, preview=False)
    assert result.pixels is not None

