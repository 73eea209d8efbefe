"""Where calibration keeps what it replays: on disk, in a private folder under the user's cache.

The recorded transformer calls (every calibration prompt at every recorded step) and the outputs of the
block before the one being calibrated (one per recorded call) are together many times one block's
weights: held in memory they were most of calibration's peak. Each is written once here (staged under a
hidden name, then renamed), read back lazily (`mx.load` reads a file when its arrays are evaluated) one
batch of calls at a time, and the whole folder is removed when the calibration ends, however it ends. A
folder left by a killed process is removed by the next calibration (core/atomic.py's staging names).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
from platformdirs import user_cache_dir

from ...atomic import OutputError, check_folder_writable, remove_stale
from ...errors import InvalidRequest

FREE_MARGIN = 256 * 2 ** 20  # bytes left free on the disk after what calibration writes
ROOT_VARIABLE = "QUANTBENCH_CALIBRATION_DIR"


def calibration_root() -> Path:
    """The folder under which calibrations make their private temporary folders: $QUANTBENCH_CALIBRATION_DIR,
    else `calibration` in the user's cache folder."""
    given = os.environ.get(ROOT_VARIABLE)
    if given and Path(given).exists() and not Path(given).is_dir():
        raise InvalidRequest(f"{ROOT_VARIABLE}={given} names a file, not a folder: point it at a folder for "
                             f"calibration's temporary files, or unset it to use the cache folder")
    return Path(given or Path(user_cache_dir("quantbench")) / "calibration")


class Spill:
    """A private temporary folder of safetensors files, one per recorded call or cached batch of outputs.
    Use it as a context manager: the folder exists inside and is removed on leaving (success, error or
    cancel)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else calibration_root()
        self.folder: Path | None = None
        self.bytes = 0  # on disk now
        self.peak = 0  # the most on disk at once

    def __enter__(self) -> "Spill":
        try:
            check_folder_writable(self.root)
        except OutputError as exc:
            raise InvalidRequest(f"calibration's temporary folder {exc}: set {ROOT_VARIABLE} to a folder it can "
                                 f"write in") from None
        free = shutil.disk_usage(self.root).free
        if free < FREE_MARGIN:  # not even the first recorded call would leave the margin
            raise InvalidRequest(f"calibration: only {free / 1e6:,.0f} MB of temporary space is free in {self.root}, "
                                 f"less than the {FREE_MARGIN // 2 ** 20} MB it keeps free: free some space there or "
                                 f"set {ROOT_VARIABLE} to a folder on a larger disk")
        remove_stale(self.root)
        self.folder = Path(tempfile.mkdtemp(prefix=f".spill.qb{os.getpid()}.", suffix=".partial", dir=self.root))
        return self

    def __exit__(self, *exc) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder, self.bytes = None, 0

    def require(self, nbytes: int, what: str) -> None:
        """Refuse, in one line, to write `nbytes` more when the disk will not hold them."""
        free = shutil.disk_usage(self.folder).free
        if nbytes + FREE_MARGIN > free:
            raise InvalidRequest(f"calibration: {what} need {nbytes / 1e6:,.0f} MB of temporary space in "
                                 f"{self.root} and only {max(free - FREE_MARGIN, 0) / 1e6:,.0f} MB is free "
                                 f"(keeping {FREE_MARGIN // 2 ** 20} MB): free some space there or set {ROOT_VARIABLE} "
                                 f"to a folder on a larger disk")

    def save(self, name: str, arrays: list[mx.array]) -> Path:
        """Write evaluated `arrays` as one file; returns its path (read it back with `load`)."""
        path = self.folder / f"{name}.safetensors"
        staging = self.folder / f".{name}.part.safetensors"
        try:
            mx.save_safetensors(str(staging), {str(i): a for i, a in enumerate(arrays)})
            os.replace(staging, path)
        except (OSError, RuntimeError, ValueError) as exc:
            staging.unlink(missing_ok=True)
            raise InvalidRequest(f"calibration: cannot write its temporary file in {self.folder} "
                                 f"({str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})") from None
        self.bytes += path.stat().st_size
        self.peak = max(self.peak, self.bytes)
        return path

    def remove(self, path: Path) -> None:
        self.bytes -= path.stat().st_size
        path.unlink()


def load(path: Path) -> list[mx.array]:
    """The arrays `Spill.save` wrote, in order, unread until evaluated."""
    loaded = mx.load(str(path))
    return [loaded[str(i)] for i in range(len(loaded))]
