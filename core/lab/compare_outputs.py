"""What `compare --out DIR` writes: a labelled contact sheet of the pictures, each picture, and
report.json, every file atomically."""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..atomic import OutputError, check_replaceable_file, discard, os_error_reason, staged_path, write_json_into
from ..errors import InvalidRequest
from ..json_text import parse_json, read_regular_file
from ..images import write_png
from ..memory import format_bytes
from ..quant import UNQUANTIZED
from .compare_report import CompareReport, PrecisionRow, format_psnr

SHEET_PAD = 8
SHEET_LABEL_HEIGHT = 36
SHEET_MIN_CELL = 192
SHEET_MAX_CELL = 384
SHEET_COLUMNS = 6
SHEET_BACKGROUND = (24, 24, 28)
SHEET_TEXT = (235, 235, 235)
SHEET_MUTED = (160, 160, 170)


def cell_size(width: int, height: int) -> tuple[int, int]:
    """Each picture's size on the sheet: small pictures scaled up by a whole factor, large ones down."""
    if width < SHEET_MIN_CELL:
        factor = math.ceil(SHEET_MIN_CELL / width)
        return width * factor, height * factor
    if width > SHEET_MAX_CELL:
        return SHEET_MAX_CELL, max(1, round(height * SHEET_MAX_CELL / width))
    return width, height


def sheet_size(count: int, width: int, height: int) -> tuple[int, int]:
    cell_w, cell_h = cell_size(width, height)
    columns = min(count, SHEET_COLUMNS)
    rows = math.ceil(count / SHEET_COLUMNS)
    return (columns * cell_w + (columns + 1) * SHEET_PAD,
            rows * (cell_h + SHEET_LABEL_HEIGHT) + (rows + 1) * SHEET_PAD)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def row_caption(row: PrecisionRow) -> tuple[str, str]:
    """('q4', '376 KB, PSNR 58.48 dB'), ('unquantized', '7.25 MB, reference'); mixed plans also show their average bits."""
    name = row.label if row.average_bits is None or row.label.startswith("q") \
        else f"{row.label} ({row.average_bits:.2f} b)"
    quality = "reference" if row.label == UNQUANTIZED else f"PSNR {format_psnr(row.psnr)} dB"  # not "PSNR inf dB"
    return name, f"{format_bytes(row.transformer_bytes)}, {quality}"


def contact_sheet(rows: list[PrecisionRow]) -> Image.Image:
    """The pictures side by side (6 to a row), each labelled with precision, bytes and PSNR."""
    if not rows:
        raise InvalidRequest("no pictures for a contact sheet")
    width, height = rows[0].image.size
    cell_w, cell_h = cell_size(width, height)
    sheet = Image.new("RGB", sheet_size(len(rows), width, height), SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    title, detail = _font(14), _font(12)
    for i, row in enumerate(rows):
        column, line = i % SHEET_COLUMNS, i // SHEET_COLUMNS
        x = SHEET_PAD + column * (cell_w + SHEET_PAD)
        y = SHEET_PAD + line * (cell_h + SHEET_LABEL_HEIGHT + SHEET_PAD)
        resample = Image.Resampling.NEAREST if cell_w >= width else Image.Resampling.LANCZOS
        sheet.paste(row.image.convert("RGB").resize((cell_w, cell_h), resample), (x, y))
        name, info = row_caption(row)
        draw.text((x + 2, y + cell_h + 3), name, fill=SHEET_TEXT, font=title)
        draw.text((x + 2, y + cell_h + 20), info, fill=SHEET_MUTED, font=detail)
    return sheet


def _file_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in label).strip("_")


def written_names(labels) -> tuple[str, ...]:
    """The files compare --out writes beside its report.json for rows of these labels."""
    return ("contact_sheet.png", *(f"{_file_label(label)}.png" for label in labels))


def check_report_replaceable(out: Path, names: tuple[str, ...]) -> None:
    """compare --out DIR replaces its own report.json there (a sweep run again into its folder), never another
    program's: a report.json that is not one compare wrote is refused before the run (it was replaced unasked).
    In a folder with no report of an earlier compare, none of `names` (files compare would write) is replaced."""
    report = Path(out) / "report.json"
    if not report.exists():
        for name in names:
            if (Path(out) / name).exists():
                raise InvalidRequest(f"{Path(out) / name} exists and no earlier compare wrote it (no report.json "
                                     "of one beside it): choose another folder")
        return
    try:
        data = parse_json(read_regular_file(report))
    except (OSError, ValueError):
        data = None
    if not (isinstance(data, dict) and isinstance(data.get("rows"), list) and "contact_sheet" in data):
        raise InvalidRequest(f"{report} exists and is not a report compare wrote: compare --out writes its "
                             "report.json there; choose another folder")


def write_outputs(report: CompareReport, out: Path | str) -> dict[str, str]:
    """--out DIR: the contact sheet, each picture and report.json; every file written atomically."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"{out} exists and is not a folder")
    if not out.parent.is_dir():
        raise InvalidRequest(f"{out.parent}: no such folder")
    check_report_replaceable(out, written_names(row.label for row in report.rows))  # again: one may have appeared
    created = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        return _write_into(report, out)
    except BaseException:
        if created:  # a folder this run made holds nothing the user had: none of it is left half-written
            discard(out)
        raise


def _write_into(report: CompareReport, out: Path) -> dict[str, str]:
    """Each file is staged beside its place and all are renamed into place only once every one is whole: a disk
    that fills up at the contact sheet leaves an earlier compare's files as they were, not half replaced."""
    drawn = report.settings
    settings = {"model": drawn.model, "prompt": drawn.prompt, "seed": drawn.seed, "steps": drawn.steps,
                "width": drawn.width, "height": drawn.height}
    images = {}
    try:
        with ExitStack() as together:
            for row in report.rows:
                path = out / f"{_file_label(row.label)}.png"
                _stage(together, path, lambda f, image=row.image, label=row.label, psnr=row.psnr: write_png(
                    image, f, {**settings, "quantize": label, "psnr": format_psnr(psnr)}))
                images[row.label] = str(path)
            sheet = out / "contact_sheet.png"
            _stage(together, sheet, lambda f: write_png(contact_sheet(report.rows), f,
                                                        {**settings, "precisions": [r.label for r in report.rows]}))
            data = report.to_dict()
            for row in data["rows"]:
                row["image"] = images[row["precision"]]
            data["contact_sheet"] = str(sheet)
            json_path = out / "report.json"
            _stage(together, json_path, lambda f: write_json_into(f, data))
    except OSError as exc:  # renaming the staged files into place
        raise OutputError(f"{out}: could not be written ({os_error_reason(exc)})") from None
    return {"contact_sheet": str(sheet), "report": str(json_path), "images": images}


def _stage(together: ExitStack, path: Path, write) -> None:
    """`write(f)` into a hidden file beside `path`, renamed to `path` when `together` closes without an error."""
    check_replaceable_file(path)
    try:
        staging = together.enter_context(staged_path(path))
        with open(staging, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputError(f"{path}: could not be written ({os_error_reason(exc)})") from None

