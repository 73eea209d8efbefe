"""Malformed model folders (issue 13, items 7, 8 and 9), one by one as a user would meet them: each is one line on
stderr and exit 2 (or, for tensors the model does not use, a warning), never a traceback, hang or wrong picture."""

import json
import os
import shutil
import struct

import mlx.core as mx
import pytest

from quantbench.cli.main import main
from quantbench.core.builtin import builtin_model_path
from quantbench.core.safetensors import LAYOUT_KEY, write_safetensors


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(builtin_model_path("demo-turbo"), folder)
    return folder


def _generate(model, tmp_path, capsys):
    out = tmp_path / "out.png"
    code = main(["generate", "--model", str(model), "--prompt", "a red star", "--steps", "1", "--out", str(out),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    if code == 2:
        assert not out.exists()
    return code, err


def _refused(model, tmp_path, capsys, message):
    code, err = _generate(model, tmp_path, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("quantbench: error: ") and message in err[0], err


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _rewrite_header(path, change):
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header = change(header) or header
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length:])


TRANSFORMER = "transformer/diffusion_pytorch_model.safetensors"


def _first_tensor(header):
    return next(k for k in header if k != "__metadata__")


# ------------------------------------------------------------------ item 7: safetensors headers

@pytest.mark.parametrize("change,message", [
    (lambda h: [1, 2], "not a JSON object"),
    (lambda h: h[_first_tensor(h)].__delitem__("data_offsets"), "invalid data_offsets"),
    (lambda h: h[_first_tensor(h)].update(data_offsets=["0", "16"]), "invalid data_offsets"),
    (lambda h: h.update(__metadata__=[1]), "__metadata__ must map names to strings"),
    (lambda h: h[_first_tensor(h)].update(dtype="F7"), "unknown dtype"),
    (lambda h: h[_first_tensor(h)].update(shape=[-1, 4]), "invalid shape"),
])
def test_a_malformed_safetensors_header_is_one_line(model, tmp_path, capsys, change, message):
    _rewrite_header(model / TRANSFORMER, change)
    _refused(model, tmp_path, capsys, message)


@pytest.mark.parametrize("dtype", ["I16", "U16"])
def test_a_header_that_calls_weights_integers_is_refused(model, tmp_path, capsys, dtype):
    """BF16 bytes declared as I16 have the right size: they were read as integers and drawn as a wrong picture."""
    def lie(header):
        name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "BF16")
        header[name]["dtype"] = dtype
    _rewrite_header(model / TRANSFORMER, lie)
    _refused(model, tmp_path, capsys, f"is stored as {dtype}, but the model holds floating-point numbers there")


def test_overlapping_tensors_are_refused(model, tmp_path, capsys):
    def overlap(header):
        a, b = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])[:2]
        size = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
        header[b]["data_offsets"] = [header[a]["data_offsets"][0], header[a]["data_offsets"][0] + size]
    _rewrite_header(model / TRANSFORMER, overlap)
    _refused(model, tmp_path, capsys, "overlap")


def test_an_implausible_header_length_is_refused_before_reading_it(model, tmp_path, capsys):
    path = model / TRANSFORMER
    path.write_bytes(struct.pack("<Q", 2**62) + path.read_bytes()[8:])
    _refused(model, tmp_path, capsys, "header runs past the end")


DEEP = "[" * 100_000 + "]" * 100_000  # nested too deep for Python's parser: json.loads raises RecursionError


@pytest.mark.parametrize("file", ["model_index.json", "transformer/config.json", "vae/config.json"])
def test_json_nested_too_deep_is_one_line(model, tmp_path, capsys, file):
    (model / file).write_text(DEEP)
    _refused(model, tmp_path, capsys, "not valid JSON")


def test_a_safetensors_header_nested_too_deep_is_one_line(model, tmp_path, capsys):
    path = model / TRANSFORMER
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(struct.pack("<Q", len(DEEP)) + DEEP.encode() + raw[8 + length:])
    _refused(model, tmp_path, capsys, "corrupt safetensors header")


@pytest.mark.parametrize("file, content, message", [
    ("tokenizer/chat_template.jinja", b"\xa2\xff{{ messages }}", "not UTF-8 text"),
    ("tokenizer/chat_template.jinja", b"{{ 1/0 }}", "failed to render: division by zero"),
    ("tokenizer/chat_template.jinja", b"{% for i in range(10**9) %}a{% endfor %}", "failed to render: Range too big"),
    ("tokenizer/chat_template.json", b"[1]", "expected a JSON object, found list"),
    ("tokenizer/tokenizer_config.json", b'"text"', "expected a JSON object, found str"),
])
def test_a_broken_tokenizer_file_is_one_line(model, tmp_path, capsys, file, content, message):
    """Each was a traceback: UnicodeDecodeError, the template's own ZeroDivisionError or OverflowError
    (Jinja's sandbox), AttributeError on a JSON list."""
    if file.endswith("chat_template.json"):
        (model / "tokenizer" / "chat_template.jinja").unlink()  # the .jinja file comes first
    (model / file).write_bytes(content)
    _refused(model, tmp_path, capsys, message)


# ------------------------------------------------------------------ item 7: saved-model metadata

@pytest.fixture
def saved(tmp_path):
    out = tmp_path / "saved"
    assert main(["save", "--model", "demo-turbo", "-q", "4", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("change,message", [
    (lambda q: q.__delitem__("layers"), "layers"),
    (lambda q: q["layers"].update({next(iter(q["layers"])): 7}), "7"),
    (lambda q: next(iter(q["layers"].values())).update(bits=7), "bits"),
    (lambda q: next(iter(q["layers"].values())).update(group_size="x"), "group size"),
])
def test_broken_saved_model_metadata_is_one_line(saved, tmp_path, capsys, change, message):
    def edit(header):
        quant = json.loads(header["__metadata__"]["quantbench"])
        change(quant)
        header["__metadata__"]["quantbench"] = json.dumps(quant)
    _rewrite_header(saved / TRANSFORMER, edit)
    _refused(saved, tmp_path, capsys, message)


# ------------------------------------------------------------------ item 7 and 8: configs and model_index.json

@pytest.mark.parametrize("file,change,message", [
    ("transformer/config.json", lambda c: [1, 2], "expected a JSON object, found a list"),
    ("transformer/config.json", lambda c: c.update(num_attention_heads=0), "num_attention_heads is 0"),
    ("transformer/config.json", lambda c: c.update(num_layers="two"), "num_layers is \"two\""),
    ("transformer/config.json", lambda c: c.update(num_layers=None), "num_layers is null"),
    ("transformer/config.json", lambda c: c.update(num_layers=10_000_000), "num_layers is 10000000"),
    ("transformer/config.json", lambda c: c.update(in_channels=-4), "in_channels is -4"),
    ("transformer/config.json", lambda c: c.update(axes_dims_rope=[8, 8, 8]), "axes_dims_rope"),
    ("transformer/config.json", lambda c: c.update(rope_theta=float("inf")), "not valid JSON"),
    ("text_encoder/config.json", lambda c: c.update(hidden_size=0), "hidden_size is 0"),
    ("vae/config.json", lambda c: c.update(block_out_channels=[32, "x"]), "block_out_channels"),
    ("model_index.json", lambda c: [c], "expected a JSON object, found a list"),
    ("model_index.json", lambda c: c.update(default_steps="many"), "default_steps \"many\""),
    ("model_index.json", lambda c: c.update(max_sequence_length=-1), "max_sequence_length -1"),
    ("model_index.json", lambda c: c.update(text_encoder_out_layers="x"), "text_encoder_out_layers"),
])
def test_a_malformed_config_is_one_line(model, tmp_path, capsys, file, change, message):
    path = model / file
    data = json.loads(path.read_text())
    data = change(data) or data
    path.write_text(json.dumps(data))
    _refused(model, tmp_path, capsys, message)


# ------------------------------------------------------------------ items 7, 8, 9: files and shards

def _shard(model):
    """Split the transformer into two shards with an index, as large checkpoints come."""
    folder = model / "transformer"
    weights = mx.load(str(folder / "diffusion_pytorch_model.safetensors"))
    names = sorted(weights)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    halves = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for file, keys in halves.items():
        write_safetensors(folder / file, {k: weights[k] for k in keys}, {"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_a_sharded_model_still_runs(model, tmp_path, capsys):
    _shard(model)
    assert _generate(model, tmp_path, capsys)[0] == 0


def test_an_index_whose_weight_map_is_a_list_is_refused(model, tmp_path, capsys):
    folder = _shard(model)
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": [1]}))
    _refused(model, tmp_path, capsys, "weight_map must map tensor names to files")


def test_a_shard_outside_the_model_folder_is_refused_unread(model, tmp_path, capsys):
    folder = _shard(model)
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    _edit_json(index, lambda i: i["weight_map"].update({k: "../../../etc/passwd" for k in list(i["weight_map"])[:1]}))
    _refused(model, tmp_path, capsys, "shard '../../../etc/passwd' is not a file in")


def test_a_weights_file_that_is_a_symlink_loop_is_one_line(model, tmp_path, capsys):
    path = model / TRANSFORMER
    path.unlink()
    os.symlink(path.name, path)
    _refused(model, tmp_path, capsys, "cannot be read")


def test_a_fifo_named_safetensors_is_refused_without_hanging(model, tmp_path, capsys):
    path = model / TRANSFORMER
    path.unlink()
    os.mkfifo(path)
    _refused(model, tmp_path, capsys, "not a regular file")


def test_tensors_the_config_has_no_place_for_are_reported(model, tmp_path, capsys):
    _edit_json(model / "transformer" / "config.json", lambda c: c.update(num_layers=c["num_layers"] - 1))
    code, err = _generate(model, tmp_path, capsys)
    assert code == 0
    assert any(line.startswith("quantbench: warning: transformer:") and "not used" in line for line in err), err


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_with_their_names(model, tmp_path, capsys, bad):
    path = model / TRANSFORMER
    weights = mx.load(str(path))
    name = sorted(k for k in weights if k.endswith("to_q.weight"))[0]
    weights[name] = mx.where(mx.arange(weights[name].size).reshape(weights[name].shape) == 3, bad,
                             weights[name]).astype(weights[name].dtype)
    path.unlink()
    write_safetensors(path, weights, {"format": "pt"})
    _refused(model, tmp_path, capsys, f"transformer: NaN or infinite values in {name}")


@pytest.mark.parametrize("change", [
    lambda q: q["layers"].update({"transformer_blocks.99.attn.to_q": next(iter(q["layers"].values()))}),
    lambda q: q["layers"].update({"norm_out": next(iter(q["layers"].values()))}),  # there, but no Linear layer
])
def test_saved_metadata_naming_a_layer_the_model_lacks_is_one_line_naming_it_and_the_file(saved, tmp_path, capsys,
                                                                                         change):
    """It was silently ignored: the model loaded as if the record were whole."""
    named = {}

    def edit(header):
        quant = json.loads(header["__metadata__"]["quantbench"])
        before = set(quant["layers"])
        change(quant)
        named["layer"] = (set(quant["layers"]) - before).pop()
        header["__metadata__"]["quantbench"] = json.dumps(quant)
    _rewrite_header(saved / TRANSFORMER, edit)
    _refused(saved, tmp_path, capsys, f"{saved / TRANSFORMER}: its quantbench metadata names layer {named['layer']}")


def _scales_and_biases(header) -> tuple[str, str]:
    layer = next(name[:-len(".scales")] for name in header if name.endswith(".scales"))
    return f"{layer}.scales", f"{layer}.biases"


def _relabel_scales(header):
    scales, _ = _scales_and_biases(header)
    assert header[scales]["dtype"] == "BF16"
    header[scales]["dtype"] = "F16"  # the same bytes, read as another dtype


def _swap_scales_and_biases(header):
    scales, biases = _scales_and_biases(header)
    header[scales]["data_offsets"], header[biases]["data_offsets"] = (header[biases]["data_offsets"],
                                                                      header[scales]["data_offsets"])


@pytest.mark.parametrize("corrupt", [_relabel_scales, _swap_scales_and_biases])
def test_a_saved_header_edited_into_another_consistent_layout_is_one_line_naming_the_file(saved, tmp_path, capsys,
                                                                                        corrupt):
    """Scales relabelled BF16 -> F16, or a layer's scales and biases given each other's bytes: the header still
    agrees with itself and with the file's size, and the model loaded silently and drew another picture. The layout
    save recorded (a digest in the header's metadata) no longer matches: one line naming the file, exit 2."""
    _rewrite_header(saved / TRANSFORMER, corrupt)
    _refused(saved, tmp_path, capsys, f"{saved / TRANSFORMER}: its tensor layout (names, dtypes, shapes, offsets) is "
                                      "not the one quantbench recorded when it saved the file")


def test_a_folder_saved_before_layouts_were_recorded_loads_as_it_did(saved, tmp_path, capsys):
    _rewrite_header(saved / TRANSFORMER, lambda header: header["__metadata__"].__delitem__(LAYOUT_KEY))
    code, err = _generate(saved, tmp_path, capsys)
    assert code == 0, err


@pytest.mark.parametrize("name", ["tokenizer/tokenizer_config.json", "tokenizer/tokenizer.json",
                                  "tokenizer/chat_template.jinja"])
@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_tokenizer_or_scheduler_file_that_is_not_a_file_is_one_line(model, tmp_path, capsys, name, kind):
    """A FIFO, a folder or /dev/zero in place of the tokenizer's JSON was taken as absent (the model ran on defaults
    it did not ship: another chat template, no special tokens) or, for tokenizer.json, said to be missing. It is
    one line naming the file."""
    path = model / name
    path.unlink()
    _not_a_file(path, kind)
    _refused(model, tmp_path, capsys, f"{path}: not a regular file")


def _not_a_file(path, kind):
    """Something other than a regular file named `path`: a FIFO, a folder or a link to /dev/zero."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        os.symlink("/dev/zero", path)


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_a_scheduler_config_that_is_not_a_file_is_one_line(tmp_path, kind):
    """The families that read scheduler/scheduler_config.json (Qwen-Image, Z-Image) ran on their default schedule
    when a FIFO, a folder or /dev/zero had its name."""
    from quantbench.core.errors import CheckpointError
    from quantbench.core.flow_match import FlowMatchSchedule
    path = tmp_path / "scheduler" / "scheduler_config.json"
    path.parent.mkdir()
    assert FlowMatchSchedule.read(tmp_path) == FlowMatchSchedule()  # absent: the defaults
    _not_a_file(path, kind)
    with pytest.raises(CheckpointError, match="scheduler_config.json: not a regular file"):
        FlowMatchSchedule.read(tmp_path)


@pytest.mark.parametrize("component, declared", [("transformer", "ZImageTransformer2DModel"),
                                                 ("vae", "AutoencoderKLQwenImage")])
def test_a_component_from_another_model_is_refused_naming_both_classes(model, tmp_path, capsys, component, declared):
    """A component folder copied from another family's model (its config.json names its own class) was read as this
    family's: a Z-Image transformer in a FLUX.2 folder was refused as needing 60 GB, or said to expect
    "joint_attention_dim None". Now one line naming both classes, before anything loads."""
    config = model / component / "config.json"
    named = json.loads((model / "model_index.json").read_text())[component][1]
    config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": declared}))
    _refused(model, tmp_path, capsys, f"a {declared}, but model_index.json names {named} for the {component}")
    assert main(["save", "--model", str(model), "-q", "4", "--out", str(tmp_path / "saved")]) == 2
    assert not (tmp_path / "saved").exists()
