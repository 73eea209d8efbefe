"""The safetensors format, read and written by us: every header checked before a byte of data is trusted,
and files written one tensor at a time.

A file is an 8-byte little-endian header length, a JSON header ({name: {dtype, shape, data_offsets}} and an
optional `__metadata__` of strings), then the tensors' bytes. A header that is not that, offsets that
overlap or run past the end of the file, or a byte count that does not match the shape and dtype, is a
one-line CheckpointError naming the file: nothing is allocated for a file that lies about its sizes.

A header can lie and stay self-consistent (a dtype relabelled to another of the same width, two tensors' offsets
swapped): a file written with `record_layout` (quantbench's saved models) carries a digest of its tensor layout in its
`__metadata__` (LAYOUT_KEY), and a header that no longer matches it is refused the same way. The digest is of the
header alone (names, dtypes, shapes, offsets), so checking it reads nothing more.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import mlx.core as mx

from .errors import CheckpointError
from .file_memo import FileMemo
from .json_text import parse_json

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2,
               "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U64": 8}
_MLX_DTYPES = {mx.float32: "F32", mx.float16: "F16", mx.bfloat16: "BF16", mx.int64: "I64", mx.int32: "I32",
               mx.int16: "I16", mx.int8: "I8", mx.uint64: "U64", mx.uint32: "U32", mx.uint16: "U16",
               mx.uint8: "U8", mx.bool_: "BOOL"}
MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit
LAYOUT_KEY = "quantbench_layout"  # __metadata__: "sha256:" + the digest of the tensor layout (layout_digest)
_ALIGN = 8


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str
    file: Path
    start: int | None = None  # where its bytes begin in the file (None: a tensor made from another on loading)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def broken_link(path: Path) -> str | None:
    """What to say of `path` when it is a symlink to nothing (a Hugging Face cache snapshot whose blob is gone:
    an interrupted download, a pruned cache), else None."""
    path = Path(path)
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
        return None
    except FileNotFoundError:
        pass
    except OSError:  # a loop of links, say: no missing blob to speak of
        return None
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return (f"{path}: a link to {target}, which is missing (an interrupted download or a pruned cache?): "
            "download the model again")


def check_regular_file(path: Path) -> None:
    """CheckpointError (one line naming `path`) unless it is a regular file, or a link to one."""
    try:
        info = path.stat()
    except OSError as exc:
        raise CheckpointError(broken_link(path) or f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path}: not a regular file")


def open_regular_file(path: Path):
    """Open a file for reading only if it is a regular file: a FIFO would block forever, a device never end,
    and a symlink loop or unreadable file is a one-line error."""
    check_regular_file(path)
    try:
        return open(path, "rb")
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors a safetensors file declares, and its metadata, after checking the header against the file."""
    path = Path(path)
    with open_regular_file(path) as f:
        size = path.stat().st_size
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file (no header)")
        header_len = struct.unpack("<Q", raw_len)[0]
        if header_len > size - 8:
            raise CheckpointError(f"{path}: truncated safetensors file (header runs past the end)")
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: safetensors header of {header_len} bytes is implausibly large")
        try:
            header = parse_json(f.read(header_len).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = _metadata(path, header.pop("__metadata__", None))
    tensors, spans = {}, []
    for name, entry in header.items():
        shape, dtype, span = _entry(path, name, entry)
        tensors[name] = TensorInfo(shape, dtype, path, 8 + header_len + span[0])
        spans.append((span, name))
    _check_spans(path, spans, size - 8 - header_len)
    recorded = metadata.get(LAYOUT_KEY)
    if recorded is not None and recorded != layout_digest(header):
        raise CheckpointError(f"{path}: its tensor layout (names, dtypes, shapes, offsets) is not the one quantbench "
                              "recorded when it saved the file: the header was edited or damaged (save the model again "
                              "from the original)")
    return tensors, metadata


# read_safetensors_header, each file's header read once while the file stays as it was (file_memo.py): one run asks for
# a component's headers through many readers (its structure, the saved-model check, each fit check, the load).
header_memo = FileMemo(read_safetensors_header, lambda found: (dict(found[0]), dict(found[1])))


def layout_digest(entries: Mapping[str, dict]) -> str:
    """The digest of a header's tensor entries ({name: {dtype, shape, data_offsets}}, no `__metadata__`), whatever
    their order in the file."""
    layout = [[name, entry["dtype"], list(entry["shape"]), list(entry["data_offsets"])]
              for name, entry in sorted(entries.items())]
    return "sha256:" + hashlib.sha256(json.dumps(layout, separators=(",", ":")).encode("utf-8")).hexdigest()


def _metadata(path: Path, metadata) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map names to strings)")
    return metadata


def _entry(path: Path, name: str, entry) -> tuple[tuple[int, ...], str, tuple[int, int]]:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: corrupt safetensors header: tensor {name!r} {why}")

    if not isinstance(entry, dict):
        raise bad("is not described by an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise bad(f"has an unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape) or len(shape) > 8:
        raise bad(f"has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_natural(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise bad(f"has invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise bad(f"holds {offsets[1] - offsets[0]} bytes, its shape {shape} of {dtype} needs {expected}")
    return tuple(shape), dtype, (offsets[0], offsets[1])


def _natural(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_spans(path: Path, spans: list[tuple[tuple[int, int], str]], data_size: int) -> None:
    end, previous = 0, None
    for (start, stop), name in sorted(spans):
        if start < end and stop > start:
            raise CheckpointError(f"{path}: corrupt safetensors header: tensors {previous!r} and {name!r} overlap")
        if stop > end:
            end, previous = stop, name
    if end > data_size:
        raise CheckpointError(f"{path}: truncated safetensors file ({end - data_size} bytes missing)")


def write_safetensors(path: Path, tensors: dict[str, mx.array], metadata: Mapping[str, str] | None = None,
                      consume: bool = False, record_layout: bool = False) -> None:
    """Write `tensors` to `path`, evaluating and writing one tensor at a time.

    With `consume`, each entry is removed from `tensors` once written, so lazy arrays that nothing else
    holds (a random model's weights) never all exist at once: the peak is the largest tensor.
    With `record_layout`, the metadata carries the digest of the tensor layout (LAYOUT_KEY), which every
    later read of the header checks.
    Write failures (a full disk) are OSErrors with their errno, as from any other file.
    """
    names = list(tensors)
    entries: dict = {}
    offset = 0
    for name in names:
        array = tensors[name]
        nbytes = math.prod(array.shape) * array.dtype.size
        entries[name] = {"dtype": _MLX_DTYPES[array.dtype], "shape": list(array.shape),
                         "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    metadata = {**(metadata or {}), **({LAYOUT_KEY: layout_digest(entries)} if record_layout else {})}
    header: dict = {"__metadata__": metadata, **entries} if metadata else entries
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % _ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name in names:
            array = tensors.pop(name) if consume else tensors[name]
            mx.eval(array)
            view = memoryview(array)
            f.write(view if view.c_contiguous else view.tobytes())
            del array, view
