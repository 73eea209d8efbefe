"""The request form: prompt, negative prompt, steps, guidance (and true CFG for FLUX.1 [dev]), seed, reference
images, size, precisions and LoRAs."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Checkbox, Input, Label, Select, TextArea

from quantbench.core import numbers
from quantbench.core.builtin import EXAMPLE_PROMPT
from quantbench.core.errors import InvalidRequest
from quantbench.core.generation import check_dimension
from quantbench.core.lora_request import LoraRequest, lora_requests, parse_lora_option
from quantbench.core.pipeline_base import ModelDefaults
from quantbench.core.quant import dequantized_budget
from quantbench.core.reference_images import checked_reference, recorded_references

from ..session import GenerationRequest
from .live import LiveStatic
from .precision import CALIBRATION_PLACEHOLDER, CALIBRATION_PROMPTS_TIP, PrecisionPicker, calibration_prompts

SIZES = (64, 128, 256, 512, 768, 1024, 1536)
SMALL_MODEL_SIZE = 256  # below: a built-in model's size (64 px), which draws nothing a large model is made for
SIZE_WORDS = {"width": "wide", "height": "high"}  # the size menus' entries: "64 wide", "64 high"
GUIDANCE_NOTES = {
    "none": "distilled model: guidance is baked into the weights, so there is no negative prompt and guidance "
            "stays {guidance:g}",
    "embedded": "guidance-distilled model: one pass per step, the guidance ({guidance:g} by default) goes into "
                "the model; no negative prompt",
    "embedded+true-cfg": "guidance-distilled model: one pass per step, the guidance ({guidance:g} by default) goes "
                         "into the model; a negative prompt needs a true CFG above 1 (two passes per step)",
    "true-cfg": "base model: true CFG (two passes per step), default guidance {guidance:g}",
    "true-cfg-optional": "base model sampled without guidance by default (one pass per step); guidance above 1 "
                         "runs true CFG with the negative prompt (two passes per step)",
}

CALIBRATION_NOTE = "{method} calibrates before loading (minutes). "
# The negative prompt's placeholder: it said "base models only" on the base models too, where it is open.
NEGATIVE_NONE, NEGATIVE_OFF = "none (optional)", "base models only"
LORA_TIP = ("LoRAs fused into the weights as they load, before quantizing (generate --lora): a .safetensors file "
            "(diffusers', the original code's or kohya's layout), a folder holding one, or a Hugging Face repo id "
            "already in the cache (quantbench download --lora fetches one), at a strength from -10 to 10 (FILE:0.8); "
            "several separated by commas")
REFERENCE_TIP = ("FLUX.2 only (generate --image): images to edit from or draw on, each at least 64 px a side, scaled "
                 "down to 1024x1024 px of area and cropped to multiples of 16; several separated by commas (up to 10). "
                 "The picture is drawn at the form's size.")
KEEP_DEQUANTIZED_TIP = ("Memory for speed, CPU only (generate --keep-dequantized): keep the quantized transformer's "
                        "layers also dequantized (float32), the largest first, up to this many GB, or all. Their "
                        "products then skip the dequantization. The memory check and the predicted peak count them.")


def _field(label: str, widget) -> Horizontal:
    return Horizontal(Label(label, classes="field-label"), widget, classes="field")


class PromptArea(TextArea):
    """The prompt, wrapped over a few lines so a long one reads from its first word and edits anywhere.

    A prompt is one paragraph: Enter generates (as it did in the one-line field) and pasted line
    breaks become spaces."""

    @dataclass
    class Submitted(Message):
        prompt_area: "PromptArea"

        @property
        def control(self) -> "PromptArea":
            return self.prompt_area

    def __init__(self, text: str = "", **kwargs):
        super().__init__(text, soft_wrap=True, show_line_numbers=False, highlight_cursor_line=False, compact=True,
                         tab_behavior="focus", **kwargs)
        self._example = text

    def _on_focus(self, event: events.Focus) -> None:
        super()._on_focus(event)
        if self._example and self.text == self._example:
            # The example is selected, so typing replaces it: "type a prompt and press Enter" on a fresh start
            # gave "a red ringa small red star ...", the typed words glued to the example's first.
            self.select_all()

    @property
    def value(self) -> str:
        return self.text

    @value.setter
    def value(self, text: str) -> None:
        self.load_text(" ".join(text.splitlines()))

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self))
            return
        await super()._on_key(event)

    async def _on_paste(self, event: events.Paste) -> None:
        event.stop()
        event.prevent_default()
        if not self.read_only:
            self.replace(" ".join(event.text.splitlines()), *self.selection)


class GeneratePane(Vertical):
    BORDER_TITLE = "Generate"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._offered: dict[str, list[int]] = {}  # each size menu's sizes, once a rerun has added one
        self._outcome_shown = False  # the status line says how the last run ended (kept in view)

    def compose(self) -> ComposeResult:
        # Filled in, not a placeholder: ctrl+g on a fresh start draws something at once.
        prompt = _field("prompt", PromptArea(EXAMPLE_PROMPT, placeholder="describe the picture", id="prompt"))
        prompt.id = "prompt-field"
        yield prompt
        yield _field("negative", Input(placeholder=NEGATIVE_NONE, id="negative", compact=True))
        yield Label("", id="distilled-note")
        yield _field("steps", Input(id="steps", type="integer", placeholder="default", compact=True))
        yield _field("guidance", Input(id="guidance", type="number", placeholder="default", compact=True))
        field = _field("true CFG", Input(id="true-cfg", type="number", placeholder="1 (off)", compact=True))
        field.id = "true-cfg-field"
        field.display = False
        yield field
        references = Input(id="reference-images", placeholder="none (FILE, ...)", compact=True)
        references.tooltip = REFERENCE_TIP
        # Two pairs a row at 80x24, where the form has no row to spare; one pair a line in the narrow Generate pane of
        # a larger window (app.tcss: Screen.-compact)
        with Grid(classes="field twin", id="seed-row"):
            yield Label("seed", classes="field-label")
            yield Input("0", id="seed", type="integer", compact=True)
            yield Checkbox("random", id="random-seed", compact=True)
            yield Label("image", id="reference-label", classes="twin-label")
            yield references
        yield _field("size", Horizontal(
            Select([(f"{s} wide", s) for s in SIZES], value=64, allow_blank=False, id="width", compact=True),
            Select([(f"{s} high", s) for s in SIZES], value=64, allow_blank=False, id="height", compact=True),
            classes="pair"))
        yield _field("transformer", PrecisionPicker(calibrated=True, id="quantize"))
        prompts = Input(id="calibration-prompts", placeholder=CALIBRATION_PLACEHOLDER, compact=True)
        prompts.tooltip = CALIBRATION_PROMPTS_TIP
        field = _field("calibrate on", prompts)
        field.id = "calibration-field"
        field.display = False
        yield field
        yield _field("text encoder", PrecisionPicker(calibrated=False, id="te-quantize"))
        keep = Input(id="keep-dequantized", placeholder="off (GB or all)", compact=True)
        keep.tooltip = KEEP_DEQUANTIZED_TIP
        loras = Input(id="loras", placeholder="none (FILE or FILE:0.8, ...)", compact=True)
        loras.tooltip = LORA_TIP
        with Grid(classes="field twin", id="keep-row"):  # at 80x24 a calibration's status needs the form's last line
            yield Label("keep dense", classes="field-label")
            yield keep
            yield Label("LoRA", id="lora-label", classes="twin-label")
            yield loras
        with Horizontal(classes="buttons"):
            yield Button("Generate ^g", id="generate", variant="primary", compact=True)
            yield Button("Cancel ^x", id="cancel", variant="error", disabled=True, compact=True)
        yield LiveStatic("", id="run-status")

    def apply_defaults(self, defaults: ModelDefaults, native_size: tuple[int, int] | None = None,
                       true_cfg: bool = False) -> None:
        """Fit the form to a model: a distilled one has no negative prompt and fixed guidance, and says why.
        `native_size`: the model's own (width, height), taken where the form's size is no size for this model: a
        built-in model's 64 px for a large one, or the other way round; between large models the size chosen stays.
        `true_cfg`: the model has a true-CFG scale apart from its guidance (FLUX.1 [dev]), which takes a
        negative prompt."""
        negative, guidance = self.query_one("#negative", Input), self.query_one("#guidance", Input)
        self.query_one("#true-cfg-field").display = true_cfg
        if not true_cfg:
            self.query_one("#true-cfg", Input).value = ""
        negative.disabled = not (defaults.negative_prompt or true_cfg)
        negative.placeholder = NEGATIVE_OFF if negative.disabled else NEGATIVE_NONE
        guidance.disabled = defaults.guidance_mode == "none"
        if negative.disabled:
            negative.value = ""
        if guidance.disabled:
            guidance.value = ""
        mode = defaults.guidance_mode + ("+true-cfg" if true_cfg and defaults.guidance_mode == "embedded" else "")
        if mode == "true-cfg" and defaults.guidance <= 1:  # Qwen-Image 2.1
            mode = "true-cfg-optional"
        self.query_one("#distilled-note", Label).update(GUIDANCE_NOTES[mode].format(guidance=defaults.guidance))
        self.query_one("#steps", Input).placeholder = f"{defaults.steps}"
        guidance.placeholder = f"{defaults.guidance:g}"  # a distilled model's fixed value (Klein 1, Z-Image-Turbo 0)
        shown = (self.query_one("#width", Select).value, self.query_one("#height", Select).value)
        if native_size and (min(native_size) < SMALL_MODEL_SIZE) != (min(shown) < SMALL_MODEL_SIZE):
            for axis, size in zip(("width", "height"), native_size):
                self._show_size(axis, size)

    def on_select_changed(self, event: Select.Changed) -> None:
        picker = self.query_one("#quantize", PrecisionPicker)
        # The row where a note said "gptq calibrates before loading (minutes)": the form has no row to spare at 80x24.
        self.query_one("#calibration-field").display = picker.calibrates
        if picker.calibrates:
            self.query_one("#calibration-prompts", Input).tooltip = (CALIBRATION_NOTE.format(method=picker.method)
                                                                     + CALIBRATION_PROMPTS_TIP)

    def set_running(self, running: bool) -> None:
        """Generate off and Cancel on while a run goes (nothing once the form's children are gone, as in
        show_status)."""
        for button in self.query("#generate, #cancel").results(Button):
            button.disabled = running if button.id == "generate" else not running

    def show_status(self, text: str | Text) -> None:
        """The run's progress under the buttons (elapsed, ETA), visible while the form is the pane on show.
        Nothing once the form's children are gone: the app closing mid-run takes them down while the run's
        timer still ticks and the run still ends."""
        self._outcome_shown = False
        for status in self.query("#run-status").results(LiveStatic):
            status.update(text)

    def show_outcome(self, text: str | Text) -> None:
        """How the run ended, under the buttons until the next run, scrolled into view: a failure ("the picture
        needs about 4 KB and its disk has 0 B free") was said only by a toast and the Monitor's last line, so at
        80x24, where the form is the one pane on show, it was gone with the toast."""
        self._outcome_shown = True
        for status in self.query("#run-status").results(LiveStatic):
            status.update(text)
        self._reveal_outcome()

    def on_resize(self, event: events.Resize) -> None:
        """The terminal resized (80x24 to 160x48 wraps the line differently): the outcome is brought into view
        again, where the scroll made for the old width left its last lines below the pane's edge."""
        if self._outcome_shown:
            self._reveal_outcome()

    def watch_virtual_size(self) -> None:
        """The outcome's wrapped lines laid out (or any height change above it): Textual sends no Resize for a
        pane whose own size stays, so a scroll made a refresh earlier could leave its last lines below the edge."""
        if self._outcome_shown:
            self._reveal_outcome()

    def _reveal_outcome(self) -> None:
        for status in self.query("#run-status").results(LiveStatic):
            self.call_after_refresh(self.scroll_to_widget, status, animate=False)

    def request(self, model: str) -> GenerationRequest:
        """The form as a request; raises InvalidRequest (one line) for what the form itself can tell."""
        prompt = self.query_one("#prompt", PromptArea).value.strip()
        if not prompt:
            raise InvalidRequest("type a prompt first")
        prompts, file = self._calibration()  # a bad file refused before a random seed is drawn into the form
        if self.query_one("#random-seed", Checkbox).value:
            seed = random.randrange(2**31)
            self.query_one("#seed", Input).value = str(seed)
        else:
            seed = _int(self.query_one("#seed", Input).value, "seed") or 0
        negative = self.query_one("#negative", Input)
        guidance = self.query_one("#guidance", Input)
        true_cfg = _float(self.query_one("#true-cfg", Input).value, "true CFG") \
            if self.query_one("#true-cfg-field").display else None
        return GenerationRequest(
            model=model, prompt=prompt,
            negative_prompt=(negative.value.strip() or None) if not negative.disabled else None,
            steps=_int(self.query_one("#steps", Input).value, "steps"),
            guidance=_float(guidance.value, "guidance") if not guidance.disabled else None,
            seed=seed, width=self.query_one("#width", Select).value, height=self.query_one("#height", Select).value,
            quantize=self.query_one("#quantize", PrecisionPicker).spec,
            text_encoder_quantize=self.query_one("#te-quantize", PrecisionPicker).spec,
            true_cfg=1.0 if true_cfg is None else true_cfg, keep_dequantized=self.keep_dequantized,
            calibration_prompts=prompts, calibration_file=file, loras=self.loras,
            reference_images=self.reference_images)

    @property
    def reference_images(self) -> tuple[Path, ...]:
        """The reference image field's files, each read from its header; raises InvalidRequest (one line) for one
        that cannot be."""
        text = self.query_one("#reference-images", Input).value
        return tuple(checked_reference(part.strip()) for part in text.split(",") if part.strip())

    @property
    def loras(self) -> tuple[LoraRequest, ...]:
        """The LoRA field's requests; raises InvalidRequest (one line) for one that cannot be."""
        text = self.query_one("#loras", Input).value
        return tuple(parse_lora_option(part.strip()) for part in text.split(",") if part.strip())

    @property
    def calibration_text(self) -> str:
        """The 'calibrate on' field as typed (Compare precisions starts from it)."""
        return self.query_one("#calibration-prompts", Input).value

    def _calibration(self) -> tuple[tuple[str, ...] | None, Path | None]:
        """The 'calibrate on' prompts and their file; none where the transformer does not calibrate (the field is
        hidden then)."""
        if not self.query_one("#quantize", PrecisionPicker).calibrates:
            return None, None
        return calibration_prompts(self.calibration_text)

    @property
    def keep_dequantized(self) -> float:
        """The 'keep dense' field in bytes (0: off, math.inf: all); raises InvalidRequest for what it cannot be."""
        text = self.query_one("#keep-dequantized", Input).value
        return dequantized_budget(text, "keep dense") if text.strip() else 0.0

    def load_request(self, record: dict) -> None:
        """Fill the form from a history record (rerun with the same settings); raises InvalidRequest for a
        precision the menus cannot show (a mixed plan: rerun it with `quantbench generate --quantize`), before any
        field changes: the prompt and settings typed for the next run were replaced, then the rerun refused."""
        for key, widget in (("quantize", "#quantize"), ("text_encoder_quantize", "#te-quantize")):
            self.query_one(widget, PrecisionPicker).showable(record.get(key))
        for key in ("width", "height"):  # a hand-edited line: refused as `generate` would, the form left alone
            if record.get(key) is not None:
                check_dimension(f"the run's {key}", record[key])
        loras = ", ".join(lora.option for lora in lora_requests(record.get("loras")))
        references = ", ".join(recorded_references(record.get("reference_images")))
        self.query_one("#prompt", PromptArea).value = record.get("prompt", "")
        self.query_one("#negative", Input).value = record.get("negative_prompt") or ""
        # null in a history line is "not set" (history.usable): the model's default steps, not the text "None"
        self.query_one("#steps", Input).value = "" if record.get("steps") is None else str(record["steps"])
        self.query_one("#seed", Input).value = str(0 if record.get("seed") is None else record["seed"])
        self.query_one("#random-seed", Checkbox).value = False
        guidance, field = record.get("guidance"), self.query_one("#guidance", Input)
        # 1 is a guidance like any other (a base model's default is 1.5 or 4): blank only where the model has none
        field.value = "" if guidance is None or field.disabled else f"{guidance:g}"
        true_cfg = record.get("true_cfg")
        self.query_one("#true-cfg", Input).value = "" if true_cfg in (None, 1.0) else f"{true_cfg:g}"
        for key in ("width", "height"):
            if record.get(key) is not None:
                self._show_size(key, record[key])
        for key, widget in (("quantize", "#quantize"), ("text_encoder_quantize", "#te-quantize")):
            self.query_one(widget, PrecisionPicker).spec = record.get(key)
        self.query_one("#calibration-prompts", Input).value = record.get("calibration_prompts") or ""
        self.query_one("#loras", Input).value = loras
        self.query_one("#reference-images", Input).value = references

    def _show_size(self, axis: str, size: int) -> None:
        """Select `size` in the width or height menu, added to the sizes it offers (in order) when it is not one of
        them: a run made at 96 or 2048 px (by `quantbench generate`, say) reran at the form's size, unsaid."""
        select = self.query_one(f"#{axis}", Select)
        offered = self._offered.setdefault(axis, list(SIZES))
        if size not in offered:
            offered.append(size)
            offered.sort()
            select.set_options([(f"{s} {SIZE_WORDS[axis]}", s) for s in offered])
        select.value = size


def _int(value: str, name: str) -> int | None:
    """A whole-number field: blank is the model's default; otherwise what the CLI takes (core/numbers.py: Textual's
    integer field lets "1_0" and "١٠" be typed, which int() reads as 10)."""
    if not value.strip():
        return None
    try:
        return numbers.whole(value)
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}") from None


def _float(value: str, name: str) -> float | None:
    if not value.strip():
        return None
    try:
        return numbers.decimal(value)
    except ValueError as exc:
        raise InvalidRequest(f"{name}: {exc}") from None
