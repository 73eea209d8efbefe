"""Screenshots of the workbench: an SVG where the images go, and a PNG beside it when something here can draw one.

Textual saves screenshots to ~/Downloads, which a server reached over SSH usually lacks. These go to
the user data directory (next to the generated images), or to the current folder when that cannot
be written. People share PNGs, so one is made too with rsvg-convert (librsvg2-bin) or cairosvg when
either is installed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from quantbench.core.atomic import Abandon, replace_file, staged_path

from .settings import data_dir

PNG_TOOLS = "rsvg-convert (librsvg2-bin) or cairosvg"


def folders() -> list[Path]:
    """Where a screenshot may go, first choice first."""
    return [data_dir() / "screenshots", Path.cwd()]


def save_svg(svg: str) -> Path:
    """Write the SVG to the first folder that takes it; raises OSError (the last folder's) when none does."""
    error: OSError | None = None
    for folder in folders():
        path = _free_name(folder, time.strftime("quantbench-%Y%m%d-%H%M%S"))
        try:
            replace_file(path, svg.encode("utf-8"))
            return path
        except OSError as exc:
            error = exc
    raise error


def to_png(svg: Path) -> Path | None:
    """The PNG beside `svg`, drawn by rsvg-convert or cairosvg; None when neither is here or both fail."""
    png = svg.with_suffix(".png")
    with staged_path(png) as staging:
        if _rsvg(svg, staging) or _cairosvg(svg, staging):
            return png
        raise Abandon
    return None


def _rsvg(svg: Path, out: Path) -> bool:
    tool = shutil.which("rsvg-convert")
    if tool is None:
        return False
    try:
        done = subprocess.run([tool, "--output", str(out), str(svg)], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and out.stat().st_size > 0


def _cairosvg(svg: Path, out: Path) -> bool:
    try:
        import cairosvg
    except (ImportError, OSError):  # OSError: the module is there but the cairo library is not
        return False
    try:
        cairosvg.svg2png(url=str(svg), write_to=str(out))
    except Exception:  # any failure of an optional converter means: no PNG this time
        return False
    return out.stat().st_size > 0


def _free_name(folder: Path, stem: str) -> Path:
    path, counter = folder / f"{stem}.svg", 1
    while path.exists() or path.with_suffix(".png").exists():
        path, counter = folder / f"{stem}-{counter}.svg", counter + 1
    return path
