"""Writing images: atomically, with the generation's settings in PNG text chunks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .errors import InvalidRequest


def to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, 3) float image in [-1, 1] -> 8-bit PIL image, rounded as diffusers does."""
    return Image.fromarray((np.clip(image / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8))


def save_png(image: Image.Image, path: Path | str, metadata: dict, overwrite: bool = False) -> Path:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a PNG."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InvalidRequest(f"{path}: the output must be a .png file")
    if path.exists() and not overwrite:
        raise InvalidRequest(f"{path} already exists (pass --overwrite to replace it)")
    if not path.parent.is_dir():
        raise InvalidRequest(f"{path.parent}: no such folder")
    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a saved image should be readable as usual
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_png_metadata(path: Path | str) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)
