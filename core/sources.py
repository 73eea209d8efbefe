"""Where a model's files are: a built-in model, a local diffusers-layout folder, or a Hugging Face repo in the cache."""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from pathlib import Path

from .builtin import builtin_model_path, is_builtin_model
from .errors import CheckpointError
from .model_files import present
from .model_files import read_model_index  # noqa: F401 (model_index.json, checked; callers import it from here)

COMPONENT_PATTERNS = ["model_index.json", "*/config.json", "*/*.json", "*/*.safetensors", "*/*.jinja",
                      "*/*.txt", "scheduler/*"]


def user_path(text: str | Path) -> Path:
    """A path as the user wrote it, `~` and `~user` expanded where they name a home folder; as written where they do
    not (pathlib's expanduser raised RuntimeError for `~nosuchuser/x`: a traceback for a model or LoRA named so)."""
    return Path(os.path.expanduser(str(text)))


def looks_like_repo_id(source: str) -> bool:
    """owner/name as the Hub names repositories (a path with a space, "my models/flux", is not one)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    parts = source.split("/")
    if not (len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))):
        return False
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def resolve_model_folder(source: str | Path, allow_download: bool = True) -> Path:
    """A folder holding model_index.json: a built-in model's name ("demo", "demo-turbo"), a local
    path, a repo id (cache first, then the Hub), or a catalog id ("klein-4b", as `recommend` names models)
    standing for its repo id. A folder of that name wins over a catalog id."""
    if is_builtin_model(source):
        return builtin_model_path(source)
    path = user_path(source)
    if path.exists():
        if not present(path / "model_index.json"):
            raise CheckpointError(f"{path}: not a diffusers model folder (no model_index.json)")
        return path
    repo_id = catalog_repo_id(str(source)) or str(source)
    if not looks_like_repo_id(repo_id):
        raise CheckpointError(f"{source}: no such folder, not a model quantbench knows (quantbench recommend lists "
                              "them) and not a Hugging Face repo id (owner/name)")
    return _from_hub(repo_id, allow_download)


def model_name(source: str) -> str:
    """The name one model goes by wherever it is listed: a catalog id ("klein-4b") is its repo id, unless a folder of
    that name is there; a built-in name, a folder or a repo id as given."""
    if is_builtin_model(source) or user_path(source).exists():
        return source
    return catalog_repo_id(source) or source


def catalog_repo_id(source: str) -> str | None:
    """The Hugging Face repo of the catalog model named `source` ("klein-4b", any case), or None. The declared
    entries, not the catalog package, whose folder reader imports this module."""
    from .catalog.known_models import DECLARED

    name = source.strip().lower()
    return next((entry.repo for entry in DECLARED if entry.id == name), None)


def _from_hub(repo_id: str, allow_download: bool) -> Path:
    """The cached snapshot when it is complete; else the Hub's, downloaded (what an interrupted download left is
    kept, the rest fetched); else one line saying what is missing and why it could not be fetched."""
    cached = cached_snapshot(repo_id)
    damage = _index_damage(cached) if cached is not None else None
    if damage and allow_download:
        damage = _download_index_again(repo_id, cached)
    if damage:
        raise NotDownloaded(f"{repo_id}: the cached model_index.json is damaged ({damage}); "
                            + (f"delete {cached.parent.parent} and run again" if allow_download else
                               "downloading with the network replaces it"))
    missing = _missing_in(repo_id, cached) if cached is not None else None
    if cached is not None and not missing:
        return cached
    if allow_download:
        try:
            folder = _download(repo_id)
        except DownloadRefused:
            raise
        except Exception as exc:  # network errors come in many classes; the reason is what matters
            cached = cached_snapshot(repo_id)
            missing = _missing_in(repo_id, cached) if cached is not None else None
            if missing:  # what the interrupted download left, and what it lacks still
                raise CheckpointError(f"{repo_id}: the download is incomplete and could not be finished "
                                      f"({_download_failure(exc)}); missing: {_listed(missing)}; running again "
                                      "with the network finishes it") from None
            raise CheckpointError(
                f"{repo_id}: not in the Hugging Face cache and could not be downloaded ({_download_failure(exc)}); "
                f"missing: model_index.json and every component folder") from None
        lacking = _missing_in(repo_id, folder)
        if lacking:
            raise CheckpointError(f"{repo_id}: the Hub's copy lacks {_listed(lacking)}: not a complete diffusers "
                                  "model")
        return folder
    if missing:
        raise NotDownloaded(f"{repo_id}: only part of it is in the Hugging Face cache (an interrupted download or a "
                            f"pruned cache?); missing: {_listed(missing)}; downloading with the network finishes it")
    raise NotDownloaded(f"{repo_id}: not in the Hugging Face cache; missing: model_index.json and every component "
                        "folder")


def _index_damage(folder: Path) -> str | None:
    """Why the snapshot's model_index.json cannot be read (None when it can, or is not there)."""
    try:
        json.loads((folder / "model_index.json").read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return "not valid JSON"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _download_index_again(repo_id: str, folder: Path) -> str | None:
    """A damaged cached model_index.json (a disk or a download that went wrong) fetched afresh from the Hub, for the
    commit the snapshot is of. None when that mended it; else why not."""
    from huggingface_hub import hf_hub_download

    _bound_hub_requests()
    try:
        hf_hub_download(repo_id, "model_index.json", revision=folder.name, force_download=True)
    except Exception as exc:
        return f"not valid JSON, and downloading it again failed: {_download_failure(exc)}"
    return _index_damage(folder)


class NotDownloaded(CheckpointError):
    """A repo id that is not in the cache, where downloading was not allowed (--offline, the workbench)."""


class DownloadRefused(CheckpointError):
    """A download not begun: the cache cannot be written, or its disk lacks the room for it."""


def _hub_cache() -> Path:
    """huggingface_hub's cache folder (HF_HUB_CACHE), read when asked: a test or a caller may have moved it."""
    from huggingface_hub import constants

    return user_path(constants.HF_HUB_CACHE)


def _repo_cache(repo_id: str) -> Path:
    """The folder of one repository in huggingface_hub's cache (refs/, snapshots/, blobs/)."""
    return _hub_cache() / f"models--{repo_id.replace('/', '--')}"


def cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder refs/main names in huggingface_hub's cache (None when there is none, or refs/main
    names a snapshot that is not there), complete or not."""
    repo = _repo_cache(repo_id)
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except (OSError, ValueError):
        return None
    folder = repo / "snapshots" / commit
    return folder if re.fullmatch(r"[0-9a-f]{40}", commit) and folder.is_dir() else None


def _missing_in(repo_id: str, folder: Path) -> list[str]:
    """What a cached snapshot lacks: the files of the Hub's listing that huggingface_hub kept when it began the
    download (newer huggingface_hub), then what model_index.json and the shard indexes name. A link into blobs/
    whose blob is gone is missing too. Nothing here raises: a corrupt file is the loader's to name."""
    missing = [name for name in _listed_by_the_hub(repo_id, folder.name) if not os.path.isfile(folder / name)]
    missing += sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink() and not p.exists())
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except FileNotFoundError:
        return list(dict.fromkeys(missing)) or ["model_index.json"]
    except (OSError, ValueError):
        return missing
    components = [key for key, value in index.items() if not key.startswith("_") and isinstance(value, list)
                  and len(value) == 2 and all(isinstance(v, str) for v in value)] if isinstance(index, dict) else []
    for component in components:
        sub = folder / component
        if not sub.is_dir():
            missing.append(f"{component}/")
            continue
        shards = []
        for shard_index in sub.glob("*.safetensors.index.json"):
            try:
                shards += [s for s in json.loads(shard_index.read_text())["weight_map"].values()]
            except (OSError, ValueError, LookupError, TypeError, AttributeError):
                continue
        missing += [f"{component}/{s}" for s in sorted(set(shards))
                    if isinstance(s, str) and "/" not in s and not os.path.isfile(sub / s)]
        weights = [p for p in sub.glob("*.safetensors") if os.path.isfile(p)]
        if os.path.isfile(sub / "config.json") and not weights and not shards:
            missing.append(f"{component}/*.safetensors")
    return list(dict.fromkeys(missing))


def _listed_by_the_hub(repo_id: str, commit: str) -> list[str]:
    try:
        from huggingface_hub import get_cached_repo_tree
        from huggingface_hub.utils import filter_repo_objects

        files = get_cached_repo_tree(repo_id, revision=commit)
    except Exception:  # an older huggingface_hub, or no listing kept: model_index.json and the indexes say the rest
        return []
    return list(filter_repo_objects([f.path for f in files], allow_patterns=COMPONENT_PATTERNS))


def _listed(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown


CACHE_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                      errno.EISDIR}


class _Stopped(Exception):
    """Raised inside huggingface_hub's download threads once the user stopped the run."""


_STOP = threading.Event()


def download_files(repo_id: str, patterns: list[str]) -> Path:
    """The cached snapshot of `repo_id` with its files matching `patterns` fetched (a LoRA's, say), refused first
    when the cache cannot be written or lacks the room; a failure is one line."""
    try:
        return _download(repo_id, patterns)
    except DownloadRefused:
        raise
    except Exception as exc:  # network errors come in many classes; the reason is what matters
        raise CheckpointError(f"{repo_id}: could not be downloaded ({_download_failure(exc)})") from None


def _download(repo_id: str, patterns: list[str] = COMPONENT_PATTERNS) -> Path:
    """snapshot_download, in a thread of its own that the main thread waits for: Ctrl-C (or SIGTERM) while its
    threads were mid-file waited for every file being fetched to end (a large shard: minutes) before
    'interrupted' was said. Now that is said at once, and the download threads stop at their next chunk
    (huggingface_hub reads 10 MB at a time) or request; what was downloaded stays for the next run to finish."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import tqdm as hub_tqdm

    class Bar(hub_tqdm):  # every chunk a download thread writes goes through a bar's update
        def update(self, n=1):
            if _STOP.is_set():
                raise _Stopped()
            return super().update(n)

    _bound_hub_requests()
    _STOP.clear()
    check_cache_writable()
    check_download_room(repo_id, patterns)
    result: dict = {}

    def fetch():
        try:
            result["folder"] = Path(snapshot_download(repo_id, allow_patterns=patterns, tqdm_class=Bar))
        except BaseException as exc:
            result["error"] = exc

    worker = threading.Thread(target=fetch, name="hub-download", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except BaseException:
        _STOP.set()
        worker.join(2)
        raise
    if "error" in result:
        raise result["error"]
    return result["folder"]


def check_cache_writable() -> None:
    """Refuse (one line) a download into a Hugging Face cache that cannot be written (a read-only or missing disk, a
    file where its folder should be): huggingface_hub only warns as it goes, and the failure read as a Hub that
    could not be reached."""
    import tempfile

    cache = _hub_cache()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache):
            pass
    except OSError as exc:
        why = "a file, not a folder" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)
        raise DownloadRefused(f"{cache}: the Hugging Face cache cannot be written ({why}): point HF_HUB_CACHE at a "
                              "folder you can write") from None


def check_download_room(repo_id: str, patterns: list[str] = COMPONENT_PATTERNS) -> None:
    """Refuse (NoRoom, one line) a download whose files, less those the cache holds already, need more room than
    the cache's disk has: a full disk found after many gigabytes is an hour lost. A Hub that will not list the
    files is left to the download itself to report."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    from .disk_space import NoRoom, check_free_space

    try:  # one request (the tree listing retries an unreachable Hub for half a minute)
        files = HfApi().model_info(repo_id, revision="main", files_metadata=True).siblings or []
    except Exception:
        return
    cached = cached_snapshot(repo_id)
    wanted = {f.rfilename: f.size for f in files if isinstance(getattr(f, "size", None), int)}
    needed = sum(wanted[name] for name in filter_repo_objects(list(wanted), allow_patterns=patterns)
                 if cached is None or not os.path.isfile(cached / name))
    try:
        check_free_space(_repo_cache(repo_id), needed, f"downloading {repo_id}")
    except NoRoom as exc:
        raise DownloadRefused(exc.saying("point HF_HUB_CACHE at a disk with room")) from None


def _bound_hub_requests() -> None:
    """huggingface_hub asks the Hub for a repository's revision and file list with no timeout (its HTTP client has
    none): a Hub that took the connection and never answered held `generate` forever. Every request made without
    a timeout of its own gets HF_HUB_ETAG_TIMEOUT (10 s unless set); the downloads keep HF_HUB_DOWNLOAD_TIMEOUT.
    Once the run is stopped, no request is sent (a download thread's retry)."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    make, set_factory = getattr(_http, "default_client_factory", None), getattr(huggingface_hub,
                                                                                "set_client_factory", None)
    if make is None or set_factory is None or getattr(_http, "_quantbench_bounded", False):
        return

    def bounded(request):
        if _STOP.is_set():
            raise _Stopped()
        limits = request.extensions.get("timeout")
        if isinstance(limits, dict) and all(v is None for v in limits.values()):
            request.extensions["timeout"] = {key: float(constants.HF_HUB_ETAG_TIMEOUT) for key in limits}

    def factory():
        client = make()
        client.event_hooks = {**client.event_hooks, "request": [*client.event_hooks.get("request", []), bounded]}
        return client

    set_factory(factory)
    _http._quantbench_bounded = True


def _download_failure(exc: BaseException) -> str:
    """Why a download failed, in a few words: the first cause in the exception's chain that says something."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    chain, seen = [], exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for cause in chain:
        name = type(cause).__name__
        if isinstance(cause, OSError) and cause.errno in CACHE_WRITE_ERRORS:  # not the network: the disk
            return f"the Hugging Face cache could not be written: {cause.strerror or cause}"
        if isinstance(cause, GatedRepoError):
            return "the repository is gated: accept its licence on the Hub and log in with `hf auth login`"
        if isinstance(cause, RepositoryNotFoundError):
            return "no such repository, or it is private"
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            status = cause.response.status_code
            if status in (401, 403):
                return f"the Hub refused access ({status}): log in with `hf auth login`"
            if status >= 500:
                return f"the Hub answered {status}, a server error: try again later"
        if "Timeout" in name:
            return (f"the Hub did not answer in time (HF_HUB_ETAG_TIMEOUT {constants.HF_HUB_ETAG_TIMEOUT} s, "
                    f"HF_HUB_DOWNLOAD_TIMEOUT {constants.HF_HUB_DOWNLOAD_TIMEOUT} s)")
        if name == "RemoteProtocolError" or "Consistency check failed" in str(cause):
            return "the connection was cut during the download"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return "the Hub could not be reached"
