"""The workbench's footer: Textual's, drawn again only when the keys it shows change."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class KeysFooter(Footer):
    """Textual's Footer makes its keys afresh (new widgets, a new layout of the screen) whenever the focused widget
    changes, though the keys it shows (the app's) are the same: that was most of a Tab's time between two fields
    of the Generate form. This one does it when the shown keys, their descriptions or their enabled state change."""

    _drawn: tuple | None = None

    def bindings_changed(self, screen: Screen) -> None:
        shown = _shown_keys(screen)
        if self._drawn is not None and shown == self._drawn:
            return
        super().bindings_changed(screen)
        if screen.app.app_focus and self.is_attached and screen is self.screen:
            self._drawn = shown


def _shown_keys(screen: Screen) -> tuple:
    return tuple((binding.key, binding.description, binding.action, binding.group, enabled, tooltip)
                 for _, binding, enabled, tooltip in screen.active_bindings.values() if binding.show)
