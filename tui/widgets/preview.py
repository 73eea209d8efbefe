"""The picture: the engine's x0 preview while a run goes, then the final image, in half blocks."""

from __future__ import annotations

from PIL import Image
from rich.text import Text
from rich_pixels import Pixels
from textual.app import ComposeResult
from textual.containers import Vertical

from .live import LiveStatic


def fit(image: Image.Image, columns: int, rows: int) -> Image.Image:
    """Scale to the cells available: one column per pixel, two pixel rows per cell row (half blocks)."""
    scale = min(columns / image.width, 2 * rows / image.height)
    if scale >= 1:
        scale = int(scale)  # integer upscaling keeps pixels square and sharp
    size = (max(1, int(image.width * scale)), max(2, int(image.height * scale) // 2 * 2))
    return image.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)


class PreviewPane(Vertical):
    BORDER_TITLE = "Preview"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.picture = LiveStatic(id="picture")
        self.caption = LiveStatic("no image yet: type a prompt and press Enter (or ctrl+g)", id="caption")

    def compose(self) -> ComposeResult:
        yield self.picture
        yield self.caption

    def show(self, image: Image.Image, caption: str) -> None:
        self._image = image.convert("RGB")
        self._draw()
        self.caption.update(Text(caption))

    def on_resize(self) -> None:
        if getattr(self, "_image", None) is not None:
            self._draw()

    def _draw(self) -> None:
        picture = self.picture
        columns = max(8, self.content_size.width)
        rows = max(4, self.content_size.height - 2)
        picture.update(Pixels.from_image(fit(self._image, columns, rows)), layout=False)  # its height is 1fr
