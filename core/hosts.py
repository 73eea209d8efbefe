"""The machines a distributed run spreads over, as `recommend --hosts` takes them."""

from __future__ import annotations

import re
from pathlib import Path

from . import numbers
from .errors import InvalidRequest
from .json_text import parse_json
from .budget import MAX_RAM_GB, MIN_RAM_GB

MAX_HOSTFILE_BYTES = 2 ** 20  # an mlx.launch hostfile lists hosts: far less; a FIFO or device is never read


def parse_hosts(value: str) -> list[float]:
    """--hosts: 'NxGB' (2x16), 'GB,GB,...' (16,24), or an mlx.launch hostfile (JSON) whose hosts carry
    "memory_gb"; the memory of each host, in GB."""
    text = value.strip()
    if not text:
        raise InvalidRequest("--hosts is empty: give NxGB (2x16), GB,GB (16,24) or a hostfile")
    if Path(text).exists():
        return _hostfile(Path(text), value)
    match = re.fullmatch(r"([0-9]+)\s*[xX]\s*(\S+)", text)
    if match:
        count = int(match.group(1))
        if not 1 <= count <= 1024:
            raise InvalidRequest(f"--hosts {value}: give 1 to 1024 hosts")
        return [_gb(match.group(2), value)] * count
    if "," in text or re.fullmatch(r"[0-9.]+", text):
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise InvalidRequest(f"--hosts {value}: a host's memory is missing between the commas (e.g. 16,24)")
        return [_gb(part, value) for part in parts]
    return _hostfile(Path(text), value)


def _hostfile(path: Path, value: str) -> list[float]:
    if path.is_dir():
        raise InvalidRequest(f"--hosts {value}: a folder, not a hostfile (a JSON list of hosts with \"memory_gb\")")
    if path.exists() and (not path.is_file() or path.stat().st_size > MAX_HOSTFILE_BYTES):
        raise InvalidRequest(f"--hosts {value}: not a hostfile (a JSON file of at most {MAX_HOSTFILE_BYTES // 2 ** 20} MB)")
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidRequest(f"--hosts {value}: not NxGB (2x16), GB,GB (16,24) or a readable hostfile "
                             f"({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"--hosts {value}: the hostfile is not JSON ({str(exc).splitlines()[0]})") from None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts:
        raise InvalidRequest(f"--hosts {value}: the hostfile has no hosts list")
    sizes = []
    for i, host in enumerate(hosts):
        memory = host.get("memory_gb") if isinstance(host, dict) else None
        if isinstance(memory, bool) or not isinstance(memory, (int, float)):
            name = host.get("ssh", f"host {i}") if isinstance(host, dict) else f"host {i}"
            raise InvalidRequest(f"--hosts {value}: {name} has no \"memory_gb\" (its memory in GB, e.g. 16)")
        sizes.append(_gb(str(memory), value))
    return sizes


def _gb(text: str, value: str) -> float:
    try:
        gb = numbers.decimal(text)
    except ValueError:
        raise InvalidRequest(f"--hosts {value}: '{text}' is not a size in GB") from None
    if not MIN_RAM_GB <= gb <= MAX_RAM_GB:  # also refuses nan and inf
        raise InvalidRequest(f"--hosts {value}: each host's memory must be {MIN_RAM_GB} to {MAX_RAM_GB} GB")
    return gb
