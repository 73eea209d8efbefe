"""Text that a run updates several times a second, without laying the whole screen out each time."""

from __future__ import annotations

from textual.widgets import Static


class LiveStatic(Static):
    """A Static whose update lays the screen out again only when its own height changes.

    `Static.update` asks for a layout of the whole screen by default: about 0.1 s for the 160x48
    workbench on a busy 2-core machine. The monitor, the form and the preview update such lines four
    times a second during a run, and a key pressed meanwhile waited for those layouts
    (`quantbench bench --key-latency`).

    Its text is shown as written, not read as markup: it carries model paths, prompts and error messages,
    where "[/]" or "[v2]" made Textual's markup parser raise and take the workbench down.
    """

    def __init__(self, content="", *, markup: bool = False, **kwargs) -> None:
        super().__init__(content, markup=markup, **kwargs)

    def update(self, content="", *, layout: bool | None = None) -> None:
        if layout is not None:
            super().update(content, layout=layout)
            return
        height, width = self.content_size.height, self.content_size.width
        super().update(content, layout=False)
        if not width or self.get_content_height(self.content_size, self.app.size, width) != height:
            self.refresh(layout=True)
