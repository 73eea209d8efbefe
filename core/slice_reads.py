"""Reading part of a checkpoint tensor straight from its safetensors file: the rows or columns one rank holds.

`mx.load` reads a tensor whole when it is evaluated, even if only a slice of it is used. A rank of a
tensor-parallel job holds 1/N of each split layer, so it reads just those bytes: one read for a run of
whole rows (a column-parallel layer's output units), one per row for a run of columns (a row-parallel
layer's input units). The bytes are the file's own, reinterpreted in their stored dtype: the part is
bit for bit the slice `mx.load` and `shard_inplace` would have made.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from .safetensors import DTYPE_BYTES, TensorInfo, open_regular_file

# Stored dtype -> (numpy dtype of the same bytes, MLX dtype to view them as, if numpy has no such type).
_VIEWS = {"F32": (np.float32, None), "F16": (np.float16, None), "BF16": (np.uint16, mx.bfloat16),
          "F64": (np.float64, None), "I64": (np.int64, None), "I32": (np.int32, None), "I16": (np.int16, None),
          "I8": (np.int8, None), "U64": (np.uint64, None), "U32": (np.uint32, None), "U16": (np.uint16, None),
          "U8": (np.uint8, None), "BOOL": (np.bool_, None)}


def own_ranges(length: int, boundaries: list[int], ranks: int, rank: int) -> list[tuple[int, int]]:
    """The [start, stop) runs of an axis of `length` that `rank` of `ranks` holds: each part between
    `boundaries` (a fused layer's q | k | v ...) cut in `ranks` equal pieces, as mlx.nn's shard_inplace
    cuts it."""
    edges = [0, *boundaries, length]
    runs = []
    for start, stop in zip(edges, edges[1:]):
        piece = (stop - start) // ranks
        runs.append((start + rank * piece, start + (rank + 1) * piece))
    return runs


def can_read_part(info: TensorInfo) -> bool:
    return info.start is not None and info.dtype in _VIEWS


def read_part(info: TensorInfo, axis: int, runs: list[tuple[int, int]]) -> mx.array:
    """The runs of `axis` of the tensor `info` describes, concatenated along it, read from its file."""
    axis = axis % len(info.shape)
    itemsize = DTYPE_BYTES[info.dtype]
    outer = math.prod(info.shape[:axis])
    inner = math.prod(info.shape[axis + 1:]) * itemsize  # bytes per index of `axis`
    length = info.shape[axis]
    width = sum(stop - start for start, stop in runs)
    buffer = bytearray(outer * width * inner)
    view = memoryview(buffer)
    position = 0
    with open_regular_file(info.file) as raw:
        f = open(raw.fileno(), "rb", buffering=0, closefd=False)
        for o in range(outer):
            for start, stop in runs:
                size = (stop - start) * inner
                f.seek(info.start + (o * length + start) * inner)
                _read_exactly(f, view[position:position + size], info)
                position += size
    numpy_dtype, view_as = _VIEWS[info.dtype]
    shape = (*info.shape[:axis], width, *info.shape[axis + 1:])
    array = mx.array(np.frombuffer(buffer, dtype=numpy_dtype).reshape(shape))
    return array.view(view_as) if view_as is not None else array


def _read_exactly(f, target: memoryview, info: TensorInfo) -> None:
    done = 0
    while done < len(target):
        got = f.readinto(target[done:])
        if not got:
            from .errors import CheckpointError
            raise CheckpointError(f"{info.file}: truncated while reading a slice (the file changed on disk?)")
        done += got
