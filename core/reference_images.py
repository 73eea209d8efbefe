"""Reference images (`--image`): read, checked, and prepared as FLUX.2's pipelines prepare them.

An image larger than 1024 x 1024 pixels in area is scaled down to that area (Lanczos, keeping its aspect), then
cropped about its centre to multiples of 16 pixels, as diffusers' Flux2ImageProcessor does: the same file gives
the same pixels to both. Everything a user can get wrong (a missing file, a folder, not an image, a damaged one,
too small, too thin, a decompression bomb, pixels that do not decode) is one InvalidRequest line naming the file,
raised when the run is planned, before anything loads.
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InvalidRequest, printable
from .sources import user_path

MAX_AREA = 1024 * 1024  # larger references are scaled down to this many pixels
MIN_SIDE = 64
MAX_ASPECT = 8
MULTIPLE = 16  # pixels per latent token
# What Pillow's decoders raise on a damaged file besides OSError (a broken PNG chunk is a SyntaxError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
# Past this many pixels a file is refused before it is decoded (Pillow's bomb check; a 64-megapixel photo passes).
MAX_PIXELS = 128 * 1024 * 1024


def reference_path(value) -> Path:
    """The absolute path of a reference image as the user named it (`~` expanded); a blank one is refused."""
    text = str(value)
    if not text.strip():
        raise InvalidRequest("an --image value is empty: give an image file")
    return user_path(text).absolute()


def recorded_references(value) -> tuple[str, ...]:
    """The reference images a record (a history line, a PNG's text chunk) names: a list of paths; anything else (a
    hand-edited line) is one line."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, (str, Path)) for item in value):
        raise InvalidRequest("the run's reference_images is not a list of files")
    return tuple(str(item) for item in value)


def _open(path: Path) -> Image.Image:
    shown = f"'{printable(str(path))}'"
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as exc:  # a name too long for the file system, a folder that cannot be searched
        raise InvalidRequest(f"reference image {shown}: cannot be read ({_why(exc)})") from None
    if not exists:
        raise InvalidRequest(f"reference image {shown}: no such file")
    if not is_file:
        raise InvalidRequest(f"reference image {shown}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Pillow's 89 MP: ours is MAX_PIXELS
            image = Image.open(path)
        if image.width * image.height > MAX_PIXELS:
            image.close()
            raise Image.DecompressionBombError("too many pixels")
        return image
    except Image.DecompressionBombError:
        raise InvalidRequest(f"reference image {shown}: more than {MAX_PIXELS // 2 ** 20} megapixels") from None
    except Image.UnidentifiedImageError:
        raise InvalidRequest(f"reference image {shown}: not an image Pillow can read") from None
    except DECODE_ERRORS as exc:
        raise InvalidRequest(f"reference image {shown}: cannot be read ({_why(exc)})") from None


def _why(exc: Exception) -> str:
    return printable(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)


def reference_size(path: Path) -> tuple[int, int]:
    """(width, height) the reference enters the model at, from the file's header (nothing decoded); refuses an
    image too small or too thin for FLUX.2 (as diffusers' check does)."""
    with _open(path) as image:
        width, height = image.size
    shown = f"'{printable(str(path))}'"
    if min(width, height) < MIN_SIDE:
        raise InvalidRequest(f"reference image {shown}: {width}x{height} is too small (both sides at least {MIN_SIDE})")
    if max(width / height, height / width) > MAX_ASPECT:
        raise InvalidRequest(f"reference image {shown}: {width}x{height} is too thin (at most {MAX_ASPECT}:1)")
    if width * height > MAX_AREA:
        scale = math.sqrt(MAX_AREA / (width * height))
        width, height = int(width * scale), int(height * scale)
    return width // MULTIPLE * MULTIPLE, height // MULTIPLE * MULTIPLE


def reference_pixels(path: Path) -> np.ndarray:
    """The image as the model takes it: (1, H, W, 3) float32 in [-1, 1], H and W multiples of 16."""
    width, height = reference_size(path)
    try:
        with _open(path) as source, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = source
            # scaled in the file's own mode, then made RGB, in diffusers' order (RGBA scales premultiplied)
            if image.width * image.height > MAX_AREA:
                scale = math.sqrt(MAX_AREA / (image.width * image.height))
                image = image.resize((int(image.width * scale), int(image.height * scale)),
                                     Image.Resampling.LANCZOS)
            image = image.convert("RGB")
    except DECODE_ERRORS as exc:  # a header that reads, pixels that do not (a truncated file)
        raise InvalidRequest(f"reference image '{printable(str(path))}': cannot be decoded ({_why(exc)})") from None
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return (pixels * 2.0 - 1.0)[None]


def checked_reference(value) -> Path:
    """One reference image as the user named it: its absolute path, once its header reads and its size passes (cheap:
    the CLI checks each --image as it is read, the workbench's form as Generate is pressed, on the UI thread); a
    refusal names the file as it was given."""
    path = reference_path(value)
    reference_size(user_path(str(value)))
    return path


def check_references(paths, limit: int, family_label: str) -> tuple[Path, ...]:
    """The references' absolute paths, each read whole (a file whose header reads but whose pixels do not is refused
    as the run is planned, not when the loaded model encodes it); more than `limit` (0: the family takes none) is
    refused."""
    paths = tuple(paths)
    if paths and not limit:
        raise InvalidRequest(f"{family_label} models take no reference image (--image): FLUX.2 does")
    if len(paths) > limit:
        raise InvalidRequest(f"{len(paths)} reference images: {family_label} takes at most {limit}")
    checked = tuple(checked_reference(path) for path in paths)
    for path in checked:
        reference_pixels(path)
    return checked
