"""The picture: the engine's x0 preview while a run goes, then the final image, in half blocks."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from PIL import Image, ImageOps
from rich.cells import cell_len
from rich.text import Text
from rich_pixels import Pixels
from textual.app import ComposeResult
from textual.containers import Vertical

from quantbench.core.errors import printable

from .live import LiveStatic


def fit(image: Image.Image, columns: int, rows: int) -> Image.Image:
    """Scale to the cells available: one column per pixel, two pixel rows per cell row (half blocks)."""
    scale = min(columns / image.width, 2 * rows / image.height)
    if scale >= 1:
        scale = int(scale)  # integer upscaling keeps pixels square and sharp
    size = (max(1, int(image.width * scale)), max(2, int(image.height * scale) // 2 * 2))
    return image.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)


# Characters from empty to full, for a terminal without colours: each stands for one cell's two pixels' brightness.
SHADES = " .:-=+*#%@"


@functools.cache
def _terminfo_colours(term: str) -> int | None:
    """How many colours terminfo says `term` has (-1: none), or None where tput cannot say."""
    try:
        answer = subprocess.run(["tput", "-T", term, "colors"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    text = answer.stdout.strip()
    return int(text) if answer.returncode == 0 and text.lstrip("-").isdigit() else None


def monochrome() -> bool:
    """Whether the terminal shows no colours (TERM=xterm-mono, vt100, vt220): Textual still sends it colours, which
    it ignores, so a picture in half blocks was rows of identical "▄"."""
    term = os.environ.get("TERM", "")
    if not term or term in ("dumb", "unknown") or os.environ.get("COLORTERM"):
        return False
    colours = _terminfo_colours(term)
    return colours is not None and colours < 8


def shaded(image: Image.Image) -> Text:
    """`image` (fitted: two pixel rows a cell) as characters whose density follows its brightness: HSV's value,
    stretched to the picture's own range (by luminance, a red star on blue stripes was one grey among others)."""
    value = ImageOps.autocontrast(image.convert("HSV").getchannel("V"), cutoff=1)
    value = value.resize((value.width, max(1, value.height // 2)), Image.BOX)
    width, last, levels = value.width, len(SHADES) - 1, value.tobytes()
    return Text("\n".join("".join(SHADES[level * last // 255] for level in levels[row:row + width])
                          for row in range(0, len(levels), width)), no_wrap=True)


def in_cells(image: Image.Image, columns: int, rows: int):
    """`image` drawn in `columns` x `rows` cells: half blocks in colour, or shades of characters on a terminal
    without colours."""
    fitted = fit(image, columns, rows)
    return shaded(fitted) if monochrome() else Pixels.from_image(fitted)


def elide_path(path: str, width: int) -> str:
    """`path` in at most `width` terminal cells: the file name whole, the folders around it cut in the middle
    ("…"), so a long path reads as where it starts, where it ends and what the file is. A name too long even
    alone is returned whole (it wraps)."""
    if cell_len(path) <= width:
        return path
    folder, sep, name = path.rpartition("/")
    if not sep:
        return path  # a file name alone: whole
    room = width - cell_len(name) - 2  # the folder's cells kept, around the "…" and before the last "/"
    if room < 1:
        return name
    return f"{_first_cells(folder, (room + 1) // 2)}…{_first_cells(folder[::-1], room // 2)[::-1]}/{name}"


def _first_cells(text: str, cells: int) -> str:
    """The longest start of `text` that takes at most `cells` cells (a wide character counts two)."""
    kept, used = [], 0
    for char in text:
        used += cell_len(char)
        if used > cells:
            break
        kept.append(char)
    return "".join(kept)


class PreviewPane(Vertical):
    BORDER_TITLE = "Preview"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.picture = LiveStatic(id="picture")
        self.caption = LiveStatic("no image yet: type a prompt and press Enter (or ctrl+g)", id="caption")

    def compose(self) -> ComposeResult:
        yield self.picture
        yield self.caption

    def show(self, image: Image.Image, caption: str, path: str | Path | None = None) -> None:
        """The picture, captioned: `caption` alone, or after the file `path` it was saved to (the path's folders
        cut in the middle where the pane is too narrow for it, the file name kept whole)."""
        self._image = image.convert("RGB")
        # printable: a folder or prompt with an ESC in it is shown, not obeyed by the terminal
        self._caption = (None if path is None else printable(str(path)), "\n".join(map(printable, caption.split("\n"))))
        self._draw()
        self._write_caption()

    def on_resize(self) -> None:
        if getattr(self, "_image", None) is not None:
            self._draw()
            self._write_caption()

    def _write_caption(self) -> None:
        path, caption = self._caption
        width = self.content_size.width
        if path is None or not width:  # not laid out yet (a tab in the back): written again on its first resize
            text = caption if path is None else f"{path}  {caption}".rstrip()
        elif cell_len(path) + 2 + cell_len(caption) <= width:
            text = f"{path}  {caption}".rstrip()
        else:  # the path on a line of its own, the rest below it
            text = "\n".join(line for line in (elide_path(path, width), caption) if line)
        self.caption.update(Text(text))

    def _draw(self) -> None:
        columns = max(8, self.content_size.width)
        rows = max(4, self.content_size.height - 2)
        self.picture.update(in_cells(self._image, columns, rows), layout=False)  # its height is 1fr
