"""What ranks send each other: JSON with numpy arrays beside it (no pickle: a peer's bytes are never executed)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np


def encode(value: Any) -> bytes:
    """JSON-able data that may hold numpy arrays, as bytes: [8-byte JSON length][JSON][npz of the arrays]."""
    arrays: list[np.ndarray] = []

    def strip(v):
        if isinstance(v, np.ndarray):
            arrays.append(v)
            return {"__array__": len(arrays) - 1}
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strip(x) for x in v]
        return v

    text = json.dumps(strip(value)).encode("utf-8")
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return len(text).to_bytes(8, "little") + text + buffer.getvalue()


def decode(data: bytes) -> Any:
    length = int.from_bytes(data[:8], "little")
    structure = json.loads(data[8:8 + length].decode("utf-8"))
    with np.load(io.BytesIO(data[8 + length:]), allow_pickle=False) as npz:
        arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]

    def fill(v):
        if isinstance(v, dict):
            if set(v) == {"__array__"}:
                return arrays[v["__array__"]]
            return {k: fill(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fill(x) for x in v]
        return v

    return fill(structure)
