"""The workbench: pick a model, see what fits, generate, and watch memory, step times and the picture."""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.command import Hit, Hits, Provider
from textual.content import Content
from textual.containers import Container, Horizontal, VerticalScroll
from textual.geometry import Size
from textual.markup import escape
from textual.message_pump import MessagePump
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Button, Header, OptionList, Static, Tab, Tabs
from textual.worker import Worker, WorkerState

from quantbench.core import cpu_kernels
from quantbench.core.errors import Cancelled, QuantbenchError, kernel_build_error, printable
from quantbench.core.generation import CancelToken
from quantbench.core.hardware import detect
from quantbench.core.lab.compare import CompareRequest, compare_request, run_compare
from quantbench.core.lab.compare_report import CompareReport
from quantbench.core.mlx_thread import QUICK, run_in_mlx_thread, stop_mlx_threads
from quantbench.core.recommend import budget_from_hardware, recommend
from quantbench.core.sources import model_name

from . import hangup, screenshots
from .history import HistoryStore
from .memory_sampler import sample_memory
from .messages import (Calibrating, CompareFailed, CompareFinished, CompareRowDone, CompareStatus, ModelLoading,
                       RunWarning, StepReported)
from .session import GenerationRequest, RunOutcome, WorkbenchSession
from .settings import Settings, data_dir, unsaved
from .themes import load_themes
from .widgets.compare import CompareScreen
from .widgets.footer import KeysFooter
from .widgets.generate import SMALL_MODEL_SIZE, GeneratePane, PromptArea
from .widgets.hardware import HardwarePane
from .widgets.history import HistoryTable
from .widgets.models import ModelsPane, model_rows
from .widgets.monitor import MonitorPane, RunSummary
from .widgets.preview import PreviewPane, elide_path

DEFAULT_MODEL = Settings.model  # the built-in model: always there, opens in a second
PANES = (("models", "Models"), ("generate", "Generate"), ("preview", "Preview"), ("hardware", "Hardware"),
         ("monitor", "Monitor"), ("history", "History"))
COMPACT_WIDTH, COMPACT_HEIGHT = 140, 40
# The header's cells besides the model's name: its icon, "quantbench — " and the room it keeps on its right
HEADER_OTHER_CELLS, HEADER_ROOM_MIN = 32, 16
MIN_WIDTH, MIN_HEIGHT = 50, 14  # below this, a pane's fields and the footer's keys no longer fit: a message instead
PREVIEW_HZ = 4
WARNING_SECONDS = 10  # a warning notification stays this long: long enough to read a prompt's cut
# How long the engine thread may hold the GIL while the event loop waits for it (Python's default is 5 ms).
# Each pass of the event loop gives the GIL up in select() and waits that long to take it back while the
# engine runs Python, and a key's handling and repaint take several passes: at 5 ms they used up the 50 ms
# budget on their own (`quantbench bench --key-latency`).
GIL_SWITCH_SECONDS = 0.001
MAIN_SCREEN_ACTIONS = ("generate", "rerun", "compare", "show_pane", "open_selected")  # they act on the panes
ENGINE = "engine"  # the worker group of generate and compare: exclusive, one model in memory at a time
KEYS = (
    ("ctrl+g, Enter", "generate with the form's settings (Enter: in the prompt)"),
    ("ctrl+x", "cancel the run (it stops at the next step, or within a layer while the model loads; nothing is "
               "saved)"),
    ("ctrl+r", "rerun the run selected in History with the same settings"),
    ("ctrl+o", "compare precisions: the form's prompt and seed at several precisions, side by side"),
    ("Enter", "in History: open that run's image in the preview"),
    ("F2-F7, 1-6", "show a pane: Models, Generate, Preview, Hardware, Monitor, History (1-6 outside a field; "
                   "a small terminal shows one at a time)"),
    ("ctrl+t", "next theme (saved for next time)"),
    ("ctrl+p", "command palette: switch model or theme, open history, take a screenshot, ..."),
    ("F1, ?", "this help"),
    ("ctrl+q, q", "quit, cancelling a run (q outside a field)"),
)
HELP_NOTES = ("Memory is sampled 4 times a second during a run and once a second when idle. Previews show the "
              "engine's denoised estimate (x0) at every step, redrawn at most 4 times a second.")
COMPARE_KEYS = (  # the help over Compare: the panes' keys do not act there
    ("Enter", "in the precisions field: compare them (BITS[:METHOD[:GROUP]], comma-separated)"),
    ("ctrl+x", "cancel the comparison (it stops at the next step, or within a layer while a model loads)"),
    ("esc", "close the view, cancelling its comparison"),
    ("ctrl+t", "next theme (saved for next time)"),
    ("ctrl+p", "command palette: switch theme, take a screenshot, ..."),
    ("F1", "this help"),
    ("ctrl+q, q", "quit, cancelling a run (q outside a field)"),
)
COMPARE_NOTES = ("The unquantized model always runs first, as the reference: each precision's picture and row "
                 "appear as it finishes, with its PSNR and SSIM against the reference.")


def key_table(keys=KEYS) -> Table:
    """The keys, each on one line beside what it does (a Markdown table wrapped them into a narrow column)."""
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    table.add_column("key", no_wrap=True, style="bold")
    table.add_column("action", ratio=1)
    for key, action in keys:
        table.add_row(key, action)
    return table


def hardware_and_advice():
    """This machine, and what fits on it (the recommendations pane)."""
    hardware = detect()
    return hardware, recommend(budget=budget_from_hardware(hardware), backend=hardware.backend)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, keys=KEYS, notes: str = HELP_NOTES):
        super().__init__()
        self.keys, self.notes = keys, notes

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("quantbench: keys", id="help-title")
            yield Static(key_table(self.keys), id="help-keys")
            yield Static(self.notes, id="help-notes")


class TooSmallScreen(Screen):
    """In place of every screen while the window is smaller than MIN_WIDTH x MIN_HEIGHT: the panes were drawn cut
    into each other there (a prompt showing "d" and "blue"). The workbench goes on behind it: a run finishes, its
    picture is saved, and making the window larger shows everything as it is."""

    def __init__(self, size: Size):
        super().__init__()
        self.message = Static(id="too-small")
        self.say(size)

    def compose(self) -> ComposeResult:
        yield self.message

    def say(self, size: Size) -> None:
        self.message.update(f"This window is {size.width}x{size.height}; the workbench needs at least "
                            f"{MIN_WIDTH}x{MIN_HEIGHT}. Make it larger, or press ctrl+q to quit.")


class WorkbenchCommands(Provider):
    """Actions for the command palette (ctrl+p)."""

    def _commands(self):
        app: QuantbenchApp = self.app  # type: ignore[assignment]
        panes = not isinstance(self.screen, CompareScreen)  # over Compare, the form's commands acted out of sight
        for row in app.query_one(ModelsPane).rows if panes else ():
            yield f"Switch model: {row.title}", lambda key=row.key: app.select_model(key), row.key
        for name in app.theme_names:
            yield f"Switch theme: {name}", lambda name=name: app.set_theme(name), "theme"
        if panes:
            yield "Generate", app.action_generate, "run"
            yield "Generate anyway (skip the memory check)", app.action_generate_anyway, \
                "run even if the memory model says this machine lacks the memory (it will swap)"
            yield "Compare precisions", app.action_compare, \
                "the same generation unquantized and at 8, 6, 5, 4 and 3 bits"
        yield "Cancel the run", app.action_cancel, "run"
        if panes:
            yield "Open history", lambda: app.action_show_pane("history"), "history"
            yield "Rerun the selected history entry", app.action_rerun, "history"
        yield "Refresh hardware and recommendations", app.refresh_hardware, "hardware"
        yield ("Memory: lean (free the text encoder and transformer between phases, tiled decode)"
               if not app.session.lean else "Memory: resident (keep everything loaded: faster reruns)"), \
            app.action_toggle_memory, "memory"
        yield "Show help", app.action_help, "help"

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback, help_text in self._commands():
            score, offsets = matcher.fuzzy_search.match(matcher.query, title)
            if score > 0:
                yield Hit(score, plain_highlight(title, offsets, matcher.match_style), callback, text=title,
                          help=escape(help_text))


def plain_highlight(title: str, offsets, style) -> Content:
    """`title` with the matched letters in `style`, read as plain text: Matcher.highlight reads it as markup, so
    "FLUX.2 [klein] 4B" showed as "FLUX.2  4B" and FLUX.1 [schnell] and [dev] as two "FLUX.1" (a folder named
    "a[/b]" would raise)."""
    content = Content(title)
    for offset in offsets:
        if not title[offset].isspace():
            content = content.stylize(style, offset, offset + 1)
    return content


class QuantbenchApp(App):
    TITLE = "quantbench"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {WorkbenchCommands}
    # ctrl keys and F-keys work while typing in a field; plain letters work everywhere else.
    BINDINGS = [
        Binding("ctrl+g", "generate", "Generate", priority=True),
        Binding("ctrl+x", "cancel", "Cancel", priority=True),
        Binding("ctrl+r", "rerun", "Rerun", priority=True),
        Binding("ctrl+o", "compare", "Compare", priority=True),
        Binding("f1,question_mark", "help", "Help", key_display="F1"),
        Binding("ctrl+t", "next_theme", "Theme", priority=True),
        Binding("ctrl+q,q", "quit", "Quit", key_display="^q", priority=False),
        Binding("o", "open_selected", "Open", show=False),
        # F-keys before the focused field (the prompt's TextArea has its own F6 and F7); digits after it.
        *[Binding(f"f{i + 2}", f"show_pane('{pane}')", title, show=False, priority=True)
          for i, (pane, title) in enumerate(PANES)],
        *[Binding(f"{i + 1}", f"show_pane('{pane}')", title, show=False) for i, (pane, title) in enumerate(PANES)],
    ]

    def __init__(self, model: str | None = None, data: Path | None = None, extra_models: list[str] | None = None):
        super().__init__()
        self._terminal_modes = hangup.terminal_modes()  # as the user had them: run() makes the terminal raw
        self.settings, settings_problem = Settings.load()
        self._startup_problems = [settings_problem] if settings_problem else []
        for theme in load_themes():
            self.register_theme(theme)
        # Chosen here, not once mounted: there, the change restyled every widget a second time as the workbench
        # opened (about a quarter of its start).
        self.theme = self.settings.theme if self.settings.theme in self.theme_names else "quantbench-dark"
        self.model = model or self.settings.model
        base = data or data_dir()
        self.session = WorkbenchSession(images_dir=base / "images", history=HistoryStore(base / "history.jsonl"))
        extra = list(extra_models or [])
        if model and Path(model).exists():
            extra.append(model)
        self.rows = model_rows(extra)
        self.cancel_token: CancelToken | None = None
        self.job: str | None = None  # "generate" or "compare" while one runs
        self._compare_listener: MessagePump | None = None
        self._step_seconds: list[float] = []
        self._latest_step = None
        self._latest_calibration = None
        # What the run said it is loading ("model": the whole model, then the prompt's encoding; else a component
        # that a lean run loads again inside the run), until a component's load ends or a step or calibration begins
        self._loading: str | None = None
        self._ticks = 0
        # Updated from timers and worker messages: held directly, not looked up (see MonitorPane).
        self.monitor = MonitorPane(id="monitor", classes="pane")
        self.preview = PreviewPane(id="preview", classes="pane")
        self.hardware = HardwarePane(id="hardware", classes="pane")
        self._panes: dict[str, Widget] = {}  # by id, once mounted
        self._highlighted: str | None = None  # the pane drawn as holding the focus

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = False) -> None:
        """Every notification shown as written, never read as markup (a widget's notify asks for markup): it
        carries folder names, paths and error messages, and a model folder named "m[/x]" made the toast's markup
        parser raise and took the workbench down as it started."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Header()
        yield Tabs(*[Tab(title, id=f"tab-{pane}") for pane, title in PANES], id="pane-tabs")
        with Container(id="panes"):
            # Marked active as the tabs will mark them (their first tab), so that marking them restyles nothing
            with Horizontal(classes="row -active"):
                yield ModelsPane(self.rows, id="models", classes="pane -active")
                yield GeneratePane(id="generate", classes="pane")
                yield self.preview
            with Horizontal(classes="row"):
                yield self.hardware
                yield self.monitor
                yield HistoryTable(id="history", classes="pane")
        yield KeysFooter(compact=True)

    def on_mount(self) -> None:
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, GIL_SWITCH_SECONDS))
        if hasattr(signal, "SIGHUP"):
            self._event_loop = asyncio.get_running_loop()
            hangup.install(self._hang_up)
            hangup.install_terminated(partial(self._hang_up, hangup.TERMINATED_EXIT_CODE), self._terminal_modes)
        self._apply_layout()
        records, history_problem = self.session.history.read()
        self.query_one(HistoryTable).set_records(list(reversed(records)))
        problems = self._startup_problems + ([history_problem] if history_problem else [])
        problem = self._switch_model(self.model)
        if problem and self.model != DEFAULT_MODEL:
            problems.append(f"{problem}; showing {DEFAULT_MODEL} instead")
            problem = self._switch_model(DEFAULT_MODEL)
        problems += [problem] if problem else []
        if problems:  # what was broken and what was done about it, said once
            # (not only saved state: the --model given on the command line may be what could not be opened)
            self.notify("\n".join(problems), title="Not everything could be opened", severity="warning",
                        timeout=15)
        self.refresh_hardware()
        self.set_interval(1 / PREVIEW_HZ, self._tick)
        self.screen_change_signal.subscribe(self, lambda _: self.call_after_refresh(self._focus_moved))
        self.query_one("#prompt").focus()

    def on_unmount(self) -> None:
        sys.setswitchinterval(self._switch_interval)
        if self._driver is not None and not self.is_headless:
            # The alternate screen cleared before the driver leaves it: under tmux, once the window had been
            # resized (80x24 to 160x48 and back), leaving it put the workbench's last screenful back on the
            # shell's screen, above the prompt, as if it were still open.
            self._driver.write("\x1b[H\x1b[2J")
        if self.cancel_token is not None:
            self.cancel_token.cancel()  # a run still going stops at its next step (a load, within a layer)
        if not self.is_headless:  # the process ends with the workbench (Pilot's tests go on in theirs)
            cpu_kernels.stop_builds()  # and a kernel being compiled for the run is not waited for
        # The MLX threads end with the workbench, and their state with them (streams, compiled graphs): waited
        # for in asyncio's executor, which the event loop's end joins, not here on the UI thread.
        asyncio.get_running_loop().run_in_executor(None, stop_mlx_threads)

    def on_resize(self, event: events.Resize) -> None:
        self._apply_layout(event.size)  # self.size is still the old one here
        self._name_model_in_header(event.size.width)

    def _name_model_in_header(self, width: int) -> None:
        """The open model after the title, a folder's path cut in its middle to the header's room: the header cut it
        at its end, and a folder deep in a long path showed as "/home/me/models/a-rather-long-fol…", no name."""
        self.sub_title = elide_path(printable(self.model), max(HEADER_ROOM_MIN, width - HEADER_OTHER_CELLS))

    def _apply_layout(self, size: Size | None = None) -> None:
        size = size or self.size
        too_small = size.width < MIN_WIDTH or size.height < MIN_HEIGHT
        if isinstance(self.screen, TooSmallScreen):
            if too_small:
                self.screen.say(size)
                return
            self.pop_screen()  # the screen that was showing comes back, laid out for the new size below
        compact = size.width < COMPACT_WIDTH or size.height < COMPACT_HEIGHT
        if compact and not self.screen.has_class("-compact"):
            self.action_show_pane(self._focused_pane() or "generate")
        self.screen.set_class(compact, "-compact")
        if too_small:
            self.push_screen(TooSmallScreen(size))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While the window is too small, only quit and cancel: a screen opened over the message (ctrl+o, F1,
        ctrl+p) was drawn cut too, and closing it once the window was larger brought the message back. Over
        Compare, none of the form's actions: a generation started there ran out of sight, behind the view."""
        if isinstance(self.screen, TooSmallScreen):
            return action in ("quit", "cancel")
        if any(isinstance(screen, CompareScreen) for screen in self.screen_stack):  # the help over it too
            return action not in MAIN_SCREEN_ACTIONS
        return True

    @on(events.DescendantFocus)
    @on(events.DescendantBlur)
    def _focus_moved(self, *_) -> None:
        """On the main screen; a screen over it (help, Compare) leaves the highlight as it was, and its closing
        (screen_change_signal, subscribed on mount) draws it where the focus came back."""
        if self.screen is self.screen_stack[0]:
            self._highlight_pane(self._focused_pane())

    def _highlight_pane(self, focused: str | None, again: bool = False) -> None:
        """The pane that holds the focus drawn in the theme's accent, by an inline style on that pane alone: app.tcss's
        `:focus-within` rule had Textual restyle every widget of the pane at each Tab, about a third of a second
        between two fields of the Generate form."""
        if focused == self._highlighted and not again:
            return
        if not self._panes:
            self._panes = {pane.id: pane for pane in self.query("#panes .pane")}
        if self._highlighted in self._panes:
            self._panes[self._highlighted].styles.border = None  # app.tcss's again
        accent = self.get_css_variables().get("accent")
        if focused in self._panes and accent:
            self._panes[focused].styles.border = ("round", accent)
        self._highlighted = focused

    def _focused_pane(self) -> str | None:
        widget = self.focused
        while widget is not None and not widget.has_class("pane"):
            widget = widget.parent
        return widget.id if widget is not None else None

    @on(Tabs.TabActivated, "#pane-tabs")
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        self._mark_active(event.tab.id.removeprefix("tab-"))

    def action_show_pane(self, pane: str) -> None:
        self.query_one("#pane-tabs", Tabs).active = f"tab-{pane}"
        self._mark_active(pane)
        widget = self.query_one(f"#{pane}")
        target = widget if widget.focusable else next((w for w in widget.query("*") if w.focusable), None)
        if target is not None:
            target.focus()

    def _mark_active(self, pane: str) -> None:
        """The pane small terminals show (app.tcss), and the row that holds it."""
        for row in self.query("#panes > .row"):
            row.set_class(any(widget.id == pane for widget in row.children), "-active")
            for widget in row.children:
                widget.set_class(widget.id == pane, "-active")

    # ------------------------------------------------------------------ models and hardware

    def select_model(self, key: str) -> None:
        problem = self._switch_model(key)
        if problem:
            self.notify(problem, severity="warning", timeout=8)

    def _switch_model(self, key: str) -> str | None:
        """Fit the form to a model and remember it; a model that cannot be opened leaves everything as it
        was and is returned as one line."""
        key = model_name(key)  # `--model klein-4b`: the Models pane's row of its repo
        try:
            defaults = self.session.defaults(key)
            true_cfg = self.session.has_true_cfg(key)
        except QuantbenchError as exc:
            return str(exc)
        except Exception as exc:  # a malformed folder can fail in any way; it must not stop the workbench
            return f"{key}: cannot open it ({type(exc).__name__}: {exc})"
        self.model = key
        models = self.query_one(ModelsPane)
        models.highlight(key)
        self._name_model_in_header(self.size.width)
        row = models.row(key)
        self.hardware.show_model(self._catalog_id(key))
        # a published model's size, and a built-in one's, are facts; a folder's entry has only the class default
        known = row and row.entry and (row.entry.repo or min(row.entry.default_size) < SMALL_MODEL_SIZE)
        native = tuple(row.entry.default_size) if known else None
        self.query_one(GeneratePane).apply_defaults(defaults, native, true_cfg=true_cfg)
        if self.settings.model != key:
            self.settings.model = key
            self._save_settings()
        return None

    def _save_settings(self) -> None:
        try:
            self.settings.save()
        except OSError as exc:
            self.notify(unsaved("settings", exc), severity="warning", timeout=8)

    def _catalog_id(self, key: str) -> str | None:
        row = next((r for r in self.rows if r.key == key), None)  # no DOM query: also called from a worker
        return row.entry.id if row is not None and row.entry is not None else None

    @on(OptionList.OptionSelected, "#model-list")
    def _model_chosen(self, event: OptionList.OptionSelected) -> None:
        self.select_model(event.option.id)

    @on(OptionList.OptionHighlighted, "#model-list")
    def _model_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        self.query_one(ModelsPane).show_details(event.option.id)

    @work(thread=True, exclusive=True, group="hardware")
    def refresh_hardware(self) -> None:
        try:
            hardware, advice = QUICK.call(hardware_and_advice)  # MLX work: see core/mlx_thread.py
        except Exception as exc:  # the pane stays empty; the workbench goes on
            reason = str(exc) if isinstance(exc, QuantbenchError) else f"{type(exc).__name__}: {exc}"
            self.call_from_thread(self.notify, f"hardware and recommendations: {reason}", severity="warning")
            return
        self.call_from_thread(self.hardware.show, hardware, advice, self._catalog_id(self.model))

    # ------------------------------------------------------------------ runs

    def action_generate(self, force: bool = False) -> None:
        if self.running:
            self.notify("a run is already going: cancel it first (ctrl+x)", severity="warning")
            return
        try:
            request = replace(self.query_one(GeneratePane).request(self.model), force=force)
            steps = request.steps or self.session.defaults(request.model).steps
        except QuantbenchError as exc:
            self.notify(str(exc), severity="error")
            return
        self._begin("generate")
        self.monitor.start_run(steps, phase="encoding the prompt")
        self.run_generation(request, self.cancel_token)

    def action_generate_anyway(self) -> None:
        self.action_generate(force=True)

    def action_compare(self) -> None:
        """Open Compare precisions with the form's model, prompt and seed (see widgets/compare.py)."""
        if self.running:
            self.notify("a run is already going: cancel it first (ctrl+x)", severity="warning")
            return
        if isinstance(self.screen, CompareScreen):
            return
        try:
            request = self.query_one(GeneratePane).request(self.model)
        except QuantbenchError as exc:
            self.notify(str(exc), severity="error")
            return
        self.session.pipeline, self.session.loaded_key = None, None  # one model in memory at a time
        self.push_screen(CompareScreen(compare_request(request), self.query_one(GeneratePane).calibration_text))

    def start_comparison(self, request: CompareRequest, listener: MessagePump) -> bool:
        """Run a comparison for a Compare view, which hears its progress; False when a run is already going."""
        if self.running:
            self.notify("a run is already going: cancel it first (ctrl+x)", severity="warning")
            return False
        self._begin("compare")
        self._compare_listener = listener
        self.run_comparison(request, self.cancel_token, listener)
        return True

    @on(Button.Pressed, "#generate")
    @on(PromptArea.Submitted, "#prompt")
    def _generate_pressed(self) -> None:
        self.action_generate()

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    def action_cancel(self) -> None:
        if self.cancel_token is not None and self.running:
            self.cancel_token.cancel()
            if self.job == "generate":
                self.monitor.set_phase("cancelling the load" if self._loading else "cancelling at the next step")

    # The engine's work runs in thread workers of one exclusive group, owned here: one model in memory and
    # one heavy job at a time. Each returns its result; the run ends in _engine_worker_changed. A worker
    # hands the MLX work itself to the process's one MLX thread (core/mlx_thread.py): a worker's pooled
    # thread that ran MLX's compiled graphs could abort the process as it ended at exit.

    @work(thread=True, exclusive=True, group=ENGINE, exit_on_error=False)
    def run_generation(self, request: GenerationRequest, cancel: CancelToken) -> RunOutcome:
        return run_in_mlx_thread(
            self.session.run, request, on_step=lambda step: self.post_message(StepReported(step)), cancel=cancel,
            on_loading=lambda: self.post_message(ModelLoading(request.model)),
            on_calibration=lambda progress: self.post_message(Calibrating(progress)),
            on_warning=lambda warning: self.post_message(RunWarning(warning)),
            on_component_loading=lambda component, done: self.post_message(ModelLoading(request.model, component,
                                                                                        done)))

    @work(thread=True, exclusive=True, group=ENGINE, exit_on_error=False)
    def run_comparison(self, request: CompareRequest, cancel: CancelToken, listener: MessagePump) -> CompareReport:
        return run_in_mlx_thread(run_compare, request, on_row=lambda row: listener.post_message(CompareRowDone(row)),
                                 on_status=lambda text: listener.post_message(CompareStatus(text)), cancel=cancel)

    @on(Worker.StateChanged)
    def _engine_worker_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group != ENGINE or not worker.is_finished:
            return
        job, loading = self.job, self._loading
        self._end()
        error, cancelled = worker.error, worker.state == WorkerState.CANCELLED or isinstance(worker.error, Cancelled)
        error = kernel_build_error(error) or error  # a full temporary folder: one line, not the compiler's output
        if isinstance(error, QuantbenchError) and not cancelled:
            reason = str(error)
        elif error is not None and not cancelled:  # an engine bug must not take the workbench down
            reason = f"unexpected error: {type(error).__name__}: {error}"
        else:
            reason = None
        if job == "compare":
            listener, self._compare_listener = self._compare_listener, None
            if worker.state == WorkerState.SUCCESS:
                listener.post_message(CompareFinished(worker.result))
            else:
                listener.post_message(CompareFailed(reason or "cancelled", cancelled=reason is None))
        elif worker.state == WorkerState.SUCCESS:
            self._generation_finished(worker.result)
        elif reason is None:
            # stopped while loading: a model's first load keeps nothing; a lean run's in-run load leaves that
            # component unloaded. Either way the next Generate loads what it needs.
            load = loading is not None and (loading != "model" or self.session.loaded_key is None)
            what = "load cancelled" if load else "cancelled"
            self.monitor.finish(f"{what}: nothing was saved")
            self.query_one(GeneratePane).show_outcome(f"{what}: nothing was saved")
            self.notify("load cancelled" if load else "run cancelled", timeout=3)
        else:
            self.monitor.finish(Text(f"failed: {reason}", style="red"))
            self.query_one(GeneratePane).show_outcome(Text(f"failed: {reason}", style="red"))
            self.notify(reason, severity="error", timeout=10)

    def on_model_loading(self, message: ModelLoading) -> None:
        self._loading = None if message.done else (message.component or "model")
        if message.done:  # what a run does after loading that component
            self.monitor.set_phase("encoding the prompt" if message.component == "text encoder" else "denoising")
        else:
            self.monitor.set_phase(f"loading the {message.component}" if message.component
                                   else f"loading {message.model}, then encoding the prompt")

    def on_run_warning(self, message: RunWarning) -> None:
        self.notify(message.warning, severity="warning", timeout=WARNING_SECONDS)

    def on_calibrating(self, message: Calibrating) -> None:
        self._loading = None
        self._latest_calibration = message.progress  # drawn by _tick, as steps are

    def on_step_reported(self, message: StepReported) -> None:
        self._latest_step = message.step  # drawn by _tick: at most PREVIEW_HZ redraws a second
        self._loading = None
        if message.step.index == 0:
            self._step_seconds = []
        self._step_seconds.append(message.step.seconds)

    def _generation_finished(self, outcome: RunOutcome) -> None:
        result = outcome.result
        self.preview.show(result.image, f"({result.width}x{result.height}, seed {result.seed})", path=outcome.path)
        summary = RunSummary(outcome.record["total_seconds"], outcome.load_seconds, tuple(result.step_seconds),
                             result.peak_memory, outcome.predicted_peak, outcome.kept_dequantized_bytes)
        self.monitor.finish(summary.text())
        self.query_one(GeneratePane).show_status(summary.text())
        self.query_one(HistoryTable).add_record(outcome.record)
        self.notify(f"saved {outcome.path}", timeout=6)
        for warning in outcome.untold_warnings:  # a prompt the text encoder cuts was said as the run began
            self.notify(warning, severity="warning", timeout=WARNING_SECONDS)

    @property
    def running(self) -> bool:
        return self.job is not None

    def _begin(self, job: str) -> None:
        self.job = job
        self.cancel_token = CancelToken()
        self._loading = None
        self._step_seconds = []
        self.query_one(GeneratePane).set_running(True)

    def _end(self) -> None:
        self._draw_latest_step()  # the last coalesced step, before the final status replaces it
        self.job = None
        self.cancel_token = None
        form = self.query_one(GeneratePane)
        form.set_running(False)
        form.show_status("")

    def _tick(self) -> None:
        """4 times a second: coalesced step redraws, elapsed time, and memory samples (1/s when idle)."""
        self._ticks += 1
        if self.running or self._ticks % PREVIEW_HZ == 0:
            self.monitor.add_sample(sample_memory())
        self._draw_latest_step()
        if self.job == "generate":
            self.monitor.tick()
            self.query_one(GeneratePane).show_status(self.monitor.status())

    def _draw_latest_step(self) -> None:
        calibration, self._latest_calibration = self._latest_calibration, None
        if calibration is not None:
            self.monitor.show_calibration(calibration)
        step, self._latest_step = self._latest_step, None
        if step is None:
            return
        self.monitor.show_step(step.index, step.total, self._step_seconds)
        if step.preview is not None:
            from PIL import Image
            self.preview.show(Image.fromarray(step.preview),
                              f"step {step.index + 1}/{step.total}: denoised estimate (x0)")

    # ------------------------------------------------------------------ history

    def action_rerun(self) -> None:
        if self.running:  # said before the form is touched: it was filled from the run, then the rerun refused
            self.notify("a run is already going: cancel it first (ctrl+x)", severity="warning")
            return
        record = self.query_one(HistoryTable).selected_record()
        if record is None:
            self.notify("select a run in History first", severity="warning")
            return
        if record.get("model") and record["model"] != self.model:
            problem = self._switch_model(record["model"])
            if problem:  # it ran anyway, on the model already open: another model's picture under the run's name
                self.notify(f"cannot rerun it: {problem}", severity="warning", timeout=8)
                return
        try:
            self.query_one(GeneratePane).load_request(record)
        except QuantbenchError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.action_generate()

    def action_open_selected(self) -> None:
        record = self.query_one(HistoryTable).selected_record()
        if record is None:
            return
        if not record.get("image"):  # Path("") is the current folder: ". is not a picture file"
            self.notify("this run names no picture file to open", severity="warning")
            return
        path = Path(record["image"])
        if not path.is_file():
            self.notify(f"{path} is gone" if not path.exists() else f"{path} is not a picture file", severity="warning")
            return
        from PIL import Image
        try:
            with Image.open(path) as image:
                picture = image.copy()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # edited, truncated, not a PNG
            self.notify(f"{path} cannot be shown ({exc})", severity="warning")
            return
        self.preview.show(picture, "", path=path)
        if self.screen.has_class("-compact"):  # one pane at a time: the picture is on another tab
            self.action_show_pane("preview")

    @on(HistoryTable.RowSelected)
    def _history_row_selected(self) -> None:
        self.action_open_selected()

    # ------------------------------------------------------------------ themes, help, quitting

    @property
    def theme_names(self) -> list[str]:
        return list(self.available_themes)

    def set_theme(self, name: str) -> None:
        self.theme = name

    def watch_theme(self, theme: str) -> None:
        if self.is_mounted:
            self.call_after_refresh(lambda: self._highlight_pane(self._focused_pane(), again=True))  # the new accent
        if hasattr(self, "settings") and self.settings.theme != theme:
            self.settings.theme = theme
            self._save_settings()

    def action_next_theme(self) -> None:
        names = self.theme_names
        self.theme = names[(names.index(self.theme) + 1) % len(names)] if self.theme in names else names[0]
        self.notify(f"theme: {self.theme}", timeout=2)

    def action_toggle_memory(self) -> None:
        self.session.set_lean(not self.session.lean)
        self.notify("memory: lean from the next run (peak = the largest phase)" if self.session.lean
                    else "memory: resident from the next run (faster reruns)", timeout=4)

    def get_system_commands(self, screen):
        for command in super().get_system_commands(screen):
            if command.title == "Screenshot":  # ours saves where the images go, and a PNG when it can
                command = SystemCommand("Screenshot", f"Save an SVG of the screen in {screenshots.folders()[0]} "
                                        f"(and a PNG with {screenshots.PNG_TOOLS})",
                                        lambda: self.set_timer(0.1, self.action_screenshot))  # once the palette is gone
            yield command

    def action_screenshot(self, filename: str | None = None, path: str | None = None) -> None:
        try:
            svg = screenshots.save_svg(self.export_screenshot())
        except OSError as exc:
            self.notify(unsaved("screenshot", exc), title="Screenshot", severity="error", timeout=10)
            return
        self.convert_screenshot(svg)

    @work(thread=True, group="screenshot")
    def convert_screenshot(self, svg: Path) -> None:
        png = screenshots.to_png(svg)
        text = f"saved {svg}" + (f"\nand {png}" if png else f"\n(for a PNG too, install {screenshots.PNG_TOOLS})")
        self.call_from_thread(self.notify, text, title="Screenshot", timeout=10)

    def action_help(self) -> None:
        compare = isinstance(self.screen, CompareScreen)
        self.push_screen(HelpScreen(COMPARE_KEYS, COMPARE_NOTES) if compare else HelpScreen())

    async def action_quit(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()  # the worker stops at the next step boundary, or a load within a layer
        self.exit()

    def _hang_up(self, return_code: int = hangup.EXIT_CODE) -> None:
        """The terminal is gone, or SIGTERM came (see hangup.py): stop the run and leave; a watchdog ends the
        process if this stalls.

        Runs in a signal handler, wherever the main thread was: it only sets the cancel token (a threading
        Event) and hands the exit to the event loop."""
        if self.cancel_token is not None:
            self.cancel_token.cancel()
        self._event_loop.call_soon_threadsafe(partial(self.exit, return_code=return_code))
