"""Malformed model folders (issue 13, items 7-9, and "What makes it last"): hypothesis mutates the built-in
model's model_index.json, configs, safetensors headers and shard index; `quantbench generate` must then either
succeed or refuse in one line with exit 2, never a traceback, never a hang, never a written file.

The examples are derandomized (the same corpus on every run); raise FUZZ_EXAMPLES to search more, and set
FUZZ_RANDOM=1 to draw a new corpus.
"""

import json
import os
import shutil
import signal
import struct
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from quantbench.cli.main import main  # noqa: E402
from quantbench.core.builtin import builtin_model_path  # noqa: E402

CASE_SECONDS = 60  # per example: the demo model generates one step in about a second
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "80"))
JSON_FILES = ["model_index.json", "transformer/config.json", "text_encoder/config.json", "vae/config.json"]
WEIGHTS = ["transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
           "vae/diffusion_pytorch_model.safetensors"]

# Values a hostile or broken file puts where a number, list or name belongs.
odd_values = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, -1, 1, 2, 3, 7, 10_000_000, 2**63, -(2**40)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["two", "", "F32", "../../etc/passwd"]),
    st.lists(st.integers(-3, 70_000), max_size=5), st.dictionaries(st.sampled_from(["a", "x"]), st.integers(), max_size=2))


INDEX = "transformer/diffusion_pytorch_model.safetensors.index.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The built-in model, and a copy whose transformer is in two shards with an index (as large ones are)."""
    import mlx.core as mx

    from quantbench.core.safetensors import write_safetensors

    root = tmp_path_factory.mktemp("fuzz")
    plain, sharded = root / "demo-turbo", root / "demo-turbo-sharded"
    shutil.copytree(builtin_model_path("demo-turbo"), plain)
    shutil.copytree(plain, sharded)
    single = sharded / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = mx.load(str(single))
    single.unlink()
    names = sorted(weights)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[: len(names) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in shards.items():
        write_safetensors(sharded / "transformer" / file, {k: weights[k] for k in keys}, {"format": "pt"})
    index = {"metadata": {"total_size": 0}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (sharded / INDEX).write_text(json.dumps(index))
    return {"plain": plain, "sharded": sharded}


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout(f"a case ran past {CASE_SECONDS} s")


def _set_path(data, path, value):
    """Replace (or, with value DELETE, remove) the entry at `path` (keys and indexes) of a JSON document."""
    *parents, last = path
    for key in parents:
        data = data[key]
    if value is DELETE:
        del data[last]
    else:
        data[last] = value


DELETE = object()


def _paths(data, prefix=()):
    """Every key/index path of a JSON document, depth first."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


@st.composite
def json_mutation(draw):
    name = draw(st.sampled_from(JSON_FILES))
    kind = draw(st.sampled_from(["value", "value", "value", "delete", "whole"]))
    if kind == "whole":
        return name, None, draw(st.sampled_from(["[1, 2]", "null", "\"x\"", "{", "NaN", b"\xff\xfe{", "{}", "1e999"]))
    return name, kind, draw(st.integers(0, 10_000)), draw(odd_values)


@st.composite
def index_mutation(draw):
    kind = draw(st.sampled_from(["value", "value", "delete", "add", "whole"]))
    if kind == "whole":
        return "index", kind, draw(st.sampled_from(["[1, 2]", "{}", '{"weight_map": []}', '{"weight_map": {"a": 1}}',
                                                    "{"])), None
    return "index", kind, draw(st.integers(0, 10_000)), draw(st.one_of(
        odd_values, st.sampled_from(["../model.safetensors", "/etc/passwd", "missing.safetensors", "."])))


@st.composite
def header_mutation(draw):
    name = draw(st.sampled_from(WEIGHTS))
    kind = draw(st.sampled_from(["entry", "entry", "field", "length", "truncate", "metadata"]))
    return name, kind, draw(st.integers(0, 10_000)), draw(odd_values), draw(st.integers(0, 2**64 - 1))


def _mutate_json(folder: Path, mutation) -> None:
    name, kind, *rest = mutation
    path = folder / name
    if kind is None:
        path.write_bytes(rest[0].encode() if isinstance(rest[0], str) else rest[0])
        return
    index, value = rest
    data = json.loads(path.read_text())
    paths = list(_paths(data))
    target = paths[index % len(paths)]
    _set_path(data, target, DELETE if kind == "delete" else value)
    path.write_text(json.dumps(data))


def _mutate_header(folder: Path, mutation) -> None:
    name, kind, index, value, number = mutation
    path = folder / name
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + length]), raw[8 + length:]
    if kind == "length":
        path.write_bytes(struct.pack("<Q", number) + raw[8:])
        return
    if kind == "truncate":
        path.write_bytes(raw[:number % len(raw)])
        return
    names = sorted(k for k in header if k != "__metadata__")
    tensor = names[index % len(names)]
    if kind == "entry":
        header[tensor] = value
    elif kind == "field":
        field = ["dtype", "shape", "data_offsets"][number % 3]
        header[tensor][field] = value
    else:
        header["__metadata__"] = value
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def _mutate_index(folder: Path, mutation) -> None:
    _, kind, index, value = mutation
    path = folder / INDEX
    if kind == "whole":
        path.write_text(index)
        return
    data = json.loads(path.read_text())
    names = sorted(data["weight_map"])
    name = names[index % len(names)]
    if kind == "value":
        data["weight_map"][name] = value
    elif kind == "delete":
        del data["weight_map"][name]
    else:
        data["weight_map"][f"{name}.extra"] = data["weight_map"][name]
    path.write_text(json.dumps(data))


def _restore(folder: Path, pristine: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(pristine, folder)


def _run_generate(folder: Path, out: Path, capsys) -> tuple[int, list[str]]:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        code = main(["generate", "--model", str(folder), "--prompt", "a red star", "--steps", "1",
                     "--out", str(out), "--quiet"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, capsys.readouterr().err.strip().splitlines()


def _check(code: int, err: list[str], out: Path) -> None:
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("quantbench: error: "), err
        assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name != out.name and p.name != "model"]
    assert leftovers == [], leftovers


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutation=st.one_of(json_mutation(), header_mutation(), index_mutation()))
def test_a_mutated_model_folder_is_run_or_refused_in_one_line(pristine, tmp_path, capsys, mutation):
    folder, out = tmp_path / "model", tmp_path / "out.png"
    _restore(folder, pristine["sharded" if mutation[0] == "index" else "plain"])
    out.unlink(missing_ok=True)
    if mutation[0] == "index":
        _mutate_index(folder, mutation)
    elif len(mutation) == 5:
        _mutate_header(folder, mutation)
    else:
        _mutate_json(folder, mutation)
    code, err = _run_generate(folder, out, capsys)
    _check(code, err, out)
