"""Moving the focus in the workbench: the pane that holds it is drawn in the theme's accent, and the footer is
made again only when the keys it shows change (a Tab between two fields once restyled the whole Generate form and
rebuilt the footer: about a third of a second a key)."""

from textual.color import Color

from quantbench.tui.app import QuantbenchApp
from quantbench.tui.widgets.footer import KeysFooter, _shown_keys
from test_workbench import WIDE, wait_for
from test_workbench_view import home  # noqa: F401  (the fixture)


def _highlighted(app) -> list[str]:
    return [pane.id for pane in app.query("#panes .pane") if pane.styles.inline.has_rule("border_top")]


def _accent(app) -> Color:
    return Color.parse(app.get_css_variables()["accent"])


def _footer_keys(app) -> set[tuple[str, bool]]:
    return {(key.key, key.disabled) for key in app.query_one(KeysFooter).query("FooterKey")}


async def test_the_focused_pane_is_drawn_in_the_accent_and_tab_between_fields_rebuilds_no_footer(home, monkeypatch):
    rebuilt = []
    recompose = KeysFooter.recompose
    monkeypatch.setattr(KeysFooter, "recompose", lambda self: rebuilt.append(1) or recompose(self))
    app = QuantbenchApp(model="demo-turbo")
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: _highlighted(app) == ["generate"], 20)
        assert app.query_one("#generate").styles.border_top == ("round", _accent(app))
        await wait_for(pilot, lambda: len(_footer_keys(app)) > 0, 10)
        await pilot.pause()
        rebuilt.clear()
        restyled = []
        update_nodes = app.stylesheet.update_nodes
        monkeypatch.setattr(app.stylesheet, "update_nodes",
                            lambda nodes, animate=False: update_nodes(restyled.extend(nodes) or nodes, animate))
        for key in ("tab", "tab", "shift+tab", "tab"):  # between the form's fields
            await pilot.press(key)
            await pilot.pause()
            assert _highlighted(app) == ["generate"]
        assert rebuilt == []  # the keys shown did not change, so the footer stayed as it was
        # the fields that lost and took the focus, not the whole form (92 widgets a move with `:focus-within`)
        assert len(restyled) < 60, len(restyled)
        shown = {(binding.key, not enabled) for _, binding, enabled, _ in app.screen.active_bindings.values()
                 if binding.show}
        assert _footer_keys(app) >= shown
        app.query_one("#history").focus()
        await pilot.pause()
        assert _highlighted(app) == ["history"]  # the Generate pane is back to app.tcss's border
        assert app.query_one("#history").styles.border_top == ("round", _accent(app))
        await pilot.press("f1")  # a screen over the panes leaves the highlight, and its closing draws it again
        await pilot.pause()
        assert _highlighted(app) == ["history"]
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.screen_stack[0] and _highlighted(app) == ["history"], 10)
        before = _accent(app)
        await pilot.press("ctrl+t")  # another theme: the highlight takes its accent
        await wait_for(pilot, lambda: app.query_one("#history").styles.border_top[1] == _accent(app), 10)
        assert _accent(app) != before and _highlighted(app) == ["history"]


async def test_the_footer_is_made_again_when_the_keys_it_shows_change(home):
    app = QuantbenchApp(model="demo-turbo")
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        footer = app.query_one(KeysFooter)
        drawn = footer._drawn
        assert drawn == _shown_keys(app.screen)
        app.bind("f9", "bell", description="Bell")  # a key the footer must now show
        app.screen.refresh_bindings()
        await wait_for(pilot, lambda: "f9" in {key.key for key in footer.query("FooterKey")}, 10)
        assert footer._drawn != drawn
