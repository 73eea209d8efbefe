"""Compare precisions: the same generation at each precision, previews side by side and the table.

The comparison runs in the workbench's engine worker (QuantbenchApp.start_comparison: the same
exclusive group as a generation, so one heavy job at a time), which tells this screen as each
precision finishes; the screen fills in that precision's preview and table row. Cancelling and
quitting go through the app, which owns the run.
"""

from __future__ import annotations

from dataclasses import replace

from PIL import Image
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, DataTable, Input, Label, Static

from quantbench.core.errors import QuantbenchError, printable
from quantbench.core.quant import choices
from quantbench.core.lab.compare import CompareRequest
from quantbench.core.lab.compare_outputs import row_caption
from quantbench.core.lab.compare_report import ATTRIBUTE_COLUMN, COLUMNS
from quantbench.core.lab.precisions import DEFAULT_PRECISIONS, parse_precisions

from ..messages import CompareFailed, CompareFinished, CompareRowDone, CompareStatus  # noqa: F401 (handled here)
from .footer import KeysFooter
from .precision import CALIBRATION_PLACEHOLDER, CALIBRATION_PROMPTS_TIP, calibration_prompts
from .preview import in_cells


class ComparePreview(Vertical):
    """One precision's picture in half blocks, with its label underneath."""

    DEFAULT_CSS = """
    ComparePreview { width: 1fr; height: 1fr; padding: 0 1; }
    ComparePreview .picture { height: 1fr; content-align: center middle; }
    ComparePreview .caption { height: auto; color: $text-muted; }
    """

    def __init__(self, label: str, **kwargs):
        super().__init__(**kwargs)
        self.label = label
        self.image: Image.Image | None = None
        self.caption_text = f"{label}\nwaiting ..."

    def compose(self) -> ComposeResult:
        yield Static(classes="picture")
        yield Static(Text(self.caption_text), classes="caption")

    def show(self, image: Image.Image, caption: str) -> None:
        self.image = image.convert("RGB")
        self.caption_text = caption
        for widget in self.query(".caption"):  # none before compose: compose starts from caption_text
            widget.update(Text(caption))
        align_captions(self.screen)

    def on_resize(self) -> None:
        align_captions(self.screen)

    def caption_rows(self) -> int:
        """The caption's lines once wrapped to the preview's width."""
        columns = max(4, self.content_size.width)
        return sum(max(1, -(-len(line) // columns)) for line in self.caption_text.split("\n"))

    def draw(self, caption_rows: int) -> None:
        """The picture above a caption `caption_rows` high (every preview's, so that they line up)."""
        self.query_one(".caption", Static).styles.height = caption_rows
        if self.image is None:
            return
        columns = max(4, self.content_size.width)
        rows = max(2, self.content_size.height - caption_rows)
        self.query_one(".picture", Static).update(in_cells(self.image, columns, rows))


def align_captions(screen) -> None:
    """Every caption as high as the tallest: at 80x24 a quantized row's "PSNR 57.45 dB" wraps where the reference's
    "reference" does not, and the captions (and pictures) stood a line apart."""
    # a row of previews just mounted (a new compare) is resized before its captions are composed: skip those
    previews = [preview for preview in screen.query(ComparePreview) if preview.query(".caption")]
    rows = max((preview.caption_rows() for preview in previews), default=1)
    for preview in previews:
        preview.draw(rows)


PRECISIONS_HELP = ("Comma-separated precisions, each BITS[:METHOD[:GROUP]]: 4, 4:mse, 3:hqq:32, 2:gptq:32 "
                   f"(methods: {', '.join(m.name for m in choices().methods)}; "
                   f"{' and '.join(m.name for m in choices().methods if m.calibrates)} calibrate first, "
                   "block by block), "
                   "auto:BITS or auto:SIZE for a searched mixed plan, or a plan file (.json). The unquantized model "
                   "is always run first, as the reference.")


class CompareScreen(Screen):
    """Opened from the workbench (ctrl+o, or "Compare precisions" in the palette)."""

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("ctrl+x", "cancel_compare", "Cancel", priority=True),
    ]
    DEFAULT_CSS = """
    CompareScreen { layout: vertical; }
    CompareScreen #compare-title { height: auto; padding: 0 1; color: $accent; }
    CompareScreen #compare-controls, CompareScreen #compare-calibration { height: 1; margin: 0 1; }
    CompareScreen #compare-controls Label, CompareScreen #compare-calibration Label { width: 13; color: $text-muted; }
    CompareScreen #compare-precisions { width: 1fr; }
    CompareScreen #compare-run { margin-left: 1; }
    CompareScreen #compare-previews { height: 1fr; min-height: 6; }
    CompareScreen #compare-table { height: auto; max-height: 12; }
    CompareScreen #compare-status { height: auto; max-height: 2; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, request: CompareRequest, calibration_text: str = "", **kwargs):
        """`calibration_text`: the 'calibrate on' field's file (the Generate form's), for precisions that calibrate."""
        super().__init__(**kwargs)
        self.request = request
        self.calibration_text = calibration_text
        self.rows: list = []
        self.report = None
        self.comparing = False  # from start() to CompareFinished or CompareFailed
        # the compare said it is loading the model and has not said anything since (not `loading`: Textual's own,
        # which covers the whole view with its loading indicator)
        self.loading_model = False
        self.builtin_attributes = False

    def compose(self) -> ComposeResult:
        request = self.request
        asked = request.settings
        yield Static(Text(printable(f"Compare precisions: {asked.model}  \"{asked.prompt}\"  seed {asked.seed}")),
                     id="compare-title")
        precisions = request.precisions if isinstance(request.precisions, str) else ",".join(request.precisions)
        with Horizontal(id="compare-controls"):
            yield Label("precisions")
            field = Input(precisions, id="compare-precisions", compact=True,
                          placeholder="e.g. 4,4:gptq,3:gptq,2:gptq:32 (unquantized, the reference, comes first)")
            field.tooltip = PRECISIONS_HELP
            yield field
            yield Button("Run", id="compare-run", compact=True, variant="primary")
        with Horizontal(id="compare-calibration"):
            yield Label("calibrate on")
            field = Input(self.calibration_text, id="compare-calibration-prompts", compact=True,
                          placeholder=CALIBRATION_PLACEHOLDER)
            field.tooltip = CALIBRATION_PROMPTS_TIP
            yield field
        yield Horizontal(id="compare-previews")
        yield DataTable(id="compare-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="compare-status")
        yield KeysFooter(compact=True)

    def on_mount(self) -> None:
        self._show_calibration(self.query_one("#compare-precisions", Input).value)
        self.start()

    @on(Input.Changed, "#compare-precisions")
    def _precisions_changed(self, event: Input.Changed) -> None:
        self._show_calibration(event.value)

    def _show_calibration(self, text: str) -> None:
        """The 'calibrate on' row, where the precisions typed calibrate (a method that calibrates, or a plan of one)."""
        try:
            calibrates = any(spec.calibrates for spec in parse_precisions(text or ",".join(DEFAULT_PRECISIONS)))
        except QuantbenchError:  # half typed: the row stays as it was
            return
        self.query_one("#compare-calibration").display = calibrates

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        if self.comparing:
            self.notify("a run is already going: cancel it first (ctrl+x)", severity="warning")
            return
        text = self.query_one("#compare-precisions", Input).value
        try:
            specs = parse_precisions(text or ",".join(DEFAULT_PRECISIONS))
            prompts, file = calibration_prompts(self.query_one("#compare-calibration-prompts", Input).value) \
                if any(spec.calibrates for spec in specs) else (None, None)
        except QuantbenchError as exc:
            self.notify(str(exc), severity="error")
            return
        self.request = replace(self.request, precisions=text or ",".join(DEFAULT_PRECISIONS),
                               calibration_prompts=prompts, calibration_prompts_file=file)
        self.rows = []
        self.report = None
        previews = self.query_one("#compare-previews", Horizontal)
        previews.remove_children()
        previews.mount(*[ComparePreview(spec.label) for spec in specs])
        table = self.query_one("#compare-table", DataTable)
        table.clear(columns=True)
        from quantbench.core.lab.compare import world_scene
        from quantbench.core.lab.models import is_builtin
        self.builtin_attributes = is_builtin(self.request.settings.model) and world_scene(self.request.settings.prompt) is not None
        table.add_columns(*COLUMNS, *([ATTRIBUTE_COLUMN] if self.builtin_attributes else []))
        if self.app.start_comparison(self.request, self):
            self.comparing = True
            self._status(f"comparing {len(specs)} precisions ...")

    def on_compare_status(self, message: CompareStatus) -> None:
        self.loading_model = message.text.startswith("loading ")
        self._status(message.text)

    def on_compare_row_done(self, message: CompareRowDone) -> None:
        row = message.row
        self.rows.append(row)
        for preview in self.query(ComparePreview):
            if preview.label == row.label:
                name, info = row_caption(row)
                preview.show(row.image, "\n".join([name, *info.split(", ")]))  # size, PSNR: one line each
        table = self.query_one("#compare-table", DataTable)
        table.add_row(*map(Text, row.cells(self.builtin_attributes)), key=row.label)  # a plan's name, not markup

    def on_compare_finished(self, message: CompareFinished) -> None:
        self.report = message.report
        self.comparing = False
        self._status(f"done in {message.report.seconds:.1f}s: {len(self.rows)} precisions, "
                     f"{message.report.settings.width}x{message.report.settings.height}, "
                     f"{message.report.settings.steps} steps")
        for warning in message.report.warnings:  # a prompt longer than the text encoder reads
            self.notify(warning, severity="warning", timeout=10)

    def on_compare_failed(self, message: CompareFailed) -> None:
        self.comparing = False
        self._status(("load cancelled" if self.loading_model else "cancelled") if message.cancelled
                     else f"failed: {message.reason}")
        self.loading_model = False
        if not message.cancelled:
            self.notify(message.reason, severity="error", timeout=10)

    def _status(self, text: str) -> None:
        self.query_one("#compare-status", Static).update(Text(text))

    # ------------------------------------------------------------------ actions

    @on(Button.Pressed, "#compare-run")
    @on(Input.Submitted, "#compare-precisions")
    @on(Input.Submitted, "#compare-calibration-prompts")
    def _run_pressed(self) -> None:
        self.start()

    def action_cancel_compare(self) -> None:
        if self.comparing:
            self.app.action_cancel()
            self._status("cancelling the load ..." if self.loading_model else "cancelling at the next step ...")

    def action_close(self) -> None:
        self.action_cancel_compare()
        self.app.pop_screen()
