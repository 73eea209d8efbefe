"""Writing images: atomically, with the generation's settings in PNG text chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .atomic import staged_file
from .errors import InvalidRequest


def to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, 3) float image in [-1, 1] -> 8-bit PIL image, rounded as diffusers does."""
    return Image.fromarray((np.clip(image / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8))


def save_png(image: Image.Image, path: Path | str, metadata: dict, overwrite: bool = False) -> Path:
    """Write to a hidden file beside `path`, then rename: a crash never leaves half a PNG (core/atomic.py)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidRequest(f"{path}: the output must be a .png file")
    with staged_file(path, overwrite) as f:
        write_png(image, f, metadata)
    return path


def write_png(image: Image.Image, f, metadata: dict) -> None:
    """`image` as a PNG into the open file `f`, with `metadata` in its text chunks (JSON for what is not text)."""
    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    image.save(f, format="PNG", pnginfo=info)


def read_png_metadata(path: Path | str) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)
