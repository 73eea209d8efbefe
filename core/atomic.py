"""Every file and folder quantbench writes appears whole or not at all, and never replaces what the
user did not ask to replace.

A write is staged under a hidden name beside its destination (`.NAME.qbPID.RANDOM.partial` for a
folder, `.NAME.qbPID.RANDOM.part` for a file) and renamed into place when complete. Without `overwrite`
the rename refuses an existing destination, even one that appeared while the run worked; with it, an old folder is
moved aside and removed only once the new one is in place. A process killed mid-write (SIGKILL, power
loss) leaves only its hidden staging name; the next write into that folder removes the stale ones whose
process is gone. Failures to write (read-only file system, full disk) are one-line errors.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from .errors import InvalidRequest

# .NAME.qbPID.RANDOM.KIND: the pid says whether the process that staged it still runs.
_STAGING = re.compile(r"^\.(.+)\.qb(\d+)\.[a-z0-9_]+\.(partial|part|old)$")


class OutputError(InvalidRequest):
    """The destination cannot be written (no such folder, read-only, full, or already there)."""


def check_destination(out: Path, overwrite: bool, folder: bool = False, into: bool = False) -> None:
    """Refuse, before any long work, a destination that the final write would fail on. `into`: a folder written
    into (compare --out DIR), not replaced, so it may be the current folder or a mount point."""
    out = Path(out)
    if not into:
        _check_replaceable(out, "folder" if folder else "file")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} already exists (pass --overwrite to replace it)")
    if out.is_dir() and not folder:
        raise OutputError(f"{out} is a folder, not a file")
    if not folder:
        check_replaceable_file(out)
    if out.exists() and folder and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: " + ("a file, not a folder" if out.parent.exists() else "no such folder"))
    _probe(out.parent, _prefix(out))


def check_replaceable_file(path: Path) -> None:
    """Refuse a file destination that the rename into place would wrongly replace: a device, FIFO or socket (as
    root, /dev/null) or a folder by that name. The one check for every file quantbench renames into place."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise OutputError(f"{path} is not a regular file (a folder, device, FIFO or socket) and cannot be replaced: "
                          "write somewhere else")


def check_apart(out: Path, model: Path) -> None:
    """Refuse an output that would replace the model folder a run reads, a folder that holds it, or a part of it:
    with --overwrite, `save --model M --out M` replaced the full-precision model with its quantized copy, `--out` a
    folder holding M removed M with everything beside it, and `--out M/transformer` broke M. A new name inside M
    replaces nothing and is allowed."""
    out, model = Path(out).absolute().resolve(), Path(model).absolute().resolve()
    if out == model or model.is_relative_to(out):
        raise OutputError(f"{out} holds the model being read ({model}): write somewhere else")
    if out.is_relative_to(model) and (out.exists() or out.is_symlink()):
        raise OutputError(f"{out} is part of the model being read ({model}): replacing it could break the model; "
                          "write somewhere else")


def _check_replaceable(out: Path, kind: str) -> None:
    """'.', '..' and '/' name no folder that can be renamed into place or replaced, nor can a mount point be
    (the rename is EBUSY): said at once, not as "Device or resource busy" once the whole model was written."""
    example = os.path.join(str(out), "NAME")
    if out.name in ("", ".", ".."):
        raise OutputError(f"{out}: give the {kind} to write by its own name, e.g. {example}")
    if os.path.ismount(out):
        raise OutputError(f"{out} is a mount point, which cannot be replaced; write into it, e.g. {example}")


def check_folder_writable(folder: Path) -> None:
    """Create `folder` if needed (as mkdir -p does) and make sure files can be written in it."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot be created ({os_error_reason(exc)})") from None
    _probe(Path(folder), f".write-check.qb{os.getpid()}.")


def _probe(folder: Path, prefix: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write there ({os_error_reason(exc)})") from None


@contextmanager
def staged_folder(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden folder beside `out`; on success it becomes `out`, on any failure it is removed."""
    out = Path(out)
    check_destination(out, overwrite, folder=True)
    remove_stale(out.parent)
    staging = _staging_name(out, "partial")
    try:
        staging.mkdir()
        staging.chmod(0o777 & ~umask())  # the folder follows the umask like any other the user creates
    except OSError as exc:
        raise OutputError(f"{out.parent}: cannot write there ({os_error_reason(exc)})") from None
    try:
        yield staging
        _move_into_place(staging, out, overwrite)
    except OSError as exc:
        discard(staging)
        raise OutputError(f"{out}: could not be written ({os_error_reason(exc)})") from None
    except BaseException:
        discard(staging)
        raise


@contextmanager
def staged_file(out: Path, overwrite: bool = False, mode: str = "wb") -> Iterator[IO]:
    """Yield a file object for a hidden file beside `out`; on success it becomes `out` (mode: umask's). A
    destination that cannot be written is refused first; any failure is one line (OutputError)."""
    out = Path(out)
    check_destination(out, overwrite)
    try:
        with staged_write(out, overwrite, mode) as f:
            yield f
    except OSError as exc:
        raise OutputError(f"{out}: could not be written ({os_error_reason(exc)})") from None


@contextmanager
def staged_write(out: Path, overwrite: bool = True, mode: str = "wb") -> Iterator[IO]:
    """staged_file without the checks and the one-line errors: OSError is the caller's to word (the workbench
    says "settings not saved: ..." and carries on)."""
    with staged_path(Path(out), overwrite) as staging:
        with open(staging, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


class Abandon(Exception):
    """Raised in a `staged_path` block: drop the staged file and leave the destination as it was, quietly."""


@contextmanager
def staged_path(out: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield the path of an empty hidden file beside `out`, for a writer that takes a path (an external tool);
    when the block ends it is renamed to `out` (mode: umask's), or removed on any failure or `Abandon`.
    Stale staging left by killed processes in that folder is removed first; OSError is raised as it is."""
    out = Path(out)
    remove_stale(out.parent)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(out), suffix=".part", dir=out.parent)
    os.close(fd)
    staging = Path(tmp)
    try:
        yield staging
        os.chmod(staging, 0o666 & ~umask())  # mkstemp creates 0600
        if overwrite:
            os.replace(staging, out)
        else:
            _rename_no_replace(staging, out)
    except Abandon:
        pass
    finally:
        discard(staging)  # gone already when it was renamed into place


@contextmanager
def library_writes(path: Path) -> Iterator[None]:
    """safetensors (save_pretrained) and tokenizers report a write that failed, a full disk, as their own errors
    ("Exception: No space left on device (os error 28)"): raised as the OSError they are, so that a staged folder
    is removed and the run ends in one line, not a traceback."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        found = re.search(r"\(os error (\d+)\)", str(error))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def replace_file(path: Path, data: bytes) -> None:
    """`data` at `path` (its folder made if needed), replacing it atomically: readers see the old file or the
    new one, never half. Raises OSError naming the file: a full disk's ENOSPC from a write names none, and one from
    the staging file would name its hidden name ("settings not saved: No space left on device" said not what)."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with staged_write(Path(path)) as f:
            f.write(data)
    except OSError as exc:
        if not exc.filename or _STAGING.match(Path(exc.filename).name):
            exc.filename = str(path)
        raise


def write_json(path: Path, data: object, overwrite: bool = True) -> Path:
    """`data` as indented JSON at `path`, written atomically (staged beside it, then renamed)."""
    with staged_file(Path(path), overwrite) as f:
        write_json_into(f, data)
    return Path(path)


def write_json_into(f: IO[bytes], data: object) -> None:
    """`data` as the JSON every file quantbench writes holds (indented by 2, ASCII, one newline at the end), into a
    file opened for binary writing: write_json's, and that of a file staged with others (compare's report.json)."""
    f.write((json.dumps(data, indent=2) + "\n").encode("utf-8"))


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    if not (overwrite and os.path.lexists(out)):
        _rename_no_replace(staging, out)
        return
    old = _staging_name(out, "old")
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)  # put the user's folder back
        raise
    discard(old)


def discard(path: Path) -> None:
    """Remove a staged folder or file (or the old folder an overwrite replaced), finishing even when Ctrl-C is
    pressed again meanwhile: removing gigabytes takes a while, and a second Ctrl-C (or a SIGTERM) interrupted it,
    leaving most of them behind under the hidden name. The exception that ended the run is raised on as it was."""
    for _ in range(100):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                Path(path).unlink(missing_ok=True)
            return
        except OSError:
            return  # not ours to remove after all: the next write's remove_stale tries again
        except BaseException:  # KeyboardInterrupt, the CLI's SIGTERM: finish the removal first
            continue


def _rename_no_replace(source: Path, target: Path) -> None:
    """Rename, refusing an existing target atomically where the OS can (Linux renameat2, macOS renamex_np)."""
    result = _native_rename_no_replace(str(source), str(target))
    if result is None:  # no native call here (or the file system lacks it): check, then rename
        if os.path.lexists(target):
            result = errno.EEXIST
        else:
            os.rename(source, target)
            return
    if result == errno.EEXIST or result == errno.ENOTEMPTY:
        raise OutputError(f"{target} appeared while this run worked; it was left as it is (pass --overwrite to "
                          f"replace it)")
    if result:
        raise OSError(result, os.strerror(result), str(target))


def set_aside(path: Path, suffix: str = ".bad") -> Path:
    """Move `path` to the first free name of NAME.bad, NAME.bad.2, NAME.bad.3, ... beside it and return that name:
    a file set aside before (the user's earlier broken settings) is never replaced. Raises OSError when it cannot."""
    path = Path(path)
    for number in range(1, 1000):
        aside = path.with_name(path.name + suffix + (f".{number}" if number > 1 else ""))
        try:
            _rename_no_replace(path, aside)
            return aside
        except OutputError:  # taken: the next name
            continue
    raise OSError(errno.EEXIST, "every name for setting it aside is taken", str(path))


def _native_rename_no_replace(source: str, target: str) -> int | None:
    """0 on success, an errno on failure, None when the OS offers no no-replace rename."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
            at_fdcwd, rename_noreplace = -100, 1
            status = libc.renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), rename_noreplace)
        elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
            rename_excl = 4
            status = libc.renamex_np(os.fsencode(source), os.fsencode(target), rename_excl)
        else:
            return None
    except OSError:
        return None
    if status == 0:
        return 0
    code = ctypes.get_errno()
    return None if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP) else code


def remove_stale(folder: Path) -> list[Path]:
    """Remove the hidden staging files and folders in `folder` left by processes that no longer run."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING.match(entry.name)
        if match is None or _alive(int(match.group(2))):
            continue
        try:
            original = Path(folder) / match.group(1)
            if match.group(3) == "old" and not os.path.lexists(original):
                os.rename(entry, original)  # killed between moving the old folder aside and the new one in
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # another process's, or not ours to remove: leave it
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process: not ours to judge
    return True


def destination_of(path: Path) -> Path:
    """What a staged file or folder (or a path inside one) becomes once it is renamed into place."""
    parts = list(Path(path).parts)
    for i, part in enumerate(parts):
        match = _STAGING.match(part)
        if match is not None:
            parts[i] = match.group(1)
    return Path(*parts)


def _prefix(out: Path) -> str:
    return f".{out.name}.qb{os.getpid()}."


def _staging_name(out: Path, kind: str) -> Path:
    return out.parent / f"{_prefix(out)}{os.urandom(4).hex()}.{kind}"


def os_error_reason(exc: OSError) -> str:
    """What went wrong, in words: "No space left on device", not "[Errno 28] ..." (copytree's list too)."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        # copytree's list of (source, destination, "[Errno 28] No space left on device: 'a' -> 'b'"): the first
        why = str(exc.args[0][0][-1])
        found = re.match(r"\[Errno (\d+)\] ", why)
        return os.strerror(int(found.group(1))) if found else why
    return exc.strerror or str(exc)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
