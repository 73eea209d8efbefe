"""What this machine has: memory, swap, memory pressure, the chip, and which MLX backend runs.

Every probe is guarded: a figure the platform does not expose is None ("unknown"), never a guess.

- RAM, available memory and swap: psutil (Linux and macOS).
- Memory pressure: on macOS the kernel's level (`sysctl kern.memorystatus_vm_pressure_level`:
  1 normal, 2 warning, 4 critical) and the wired and compressed pages (`vm_stat`); on Linux the
  pressure-stall information in /proc/pressure/memory (share of time tasks waited for memory).
- Chip: `sysctl machdep.cpu.brand_string` on macOS, /proc/cpuinfo on Linux.
- MLX backend: Metal, CUDA or CPU, from mlx.core; on Metal the device's recommended working set
  (the most GPU memory macOS lets a process keep resident without pressure); the device's memory
  size where MLX reports it (on CUDA, the card's own memory, which is what models run in).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import psutil

PRESSURE_LEVELS = {1: "normal", 2: "warning", 4: "critical"}

Runner = Callable[[list[str]], str | None]


@dataclass(frozen=True)
class HardwareInfo:
    os: str
    os_version: str
    arch: str
    chip: str | None
    cpu_count: int | None
    total_ram: int | None
    available_ram: int | None
    swap_total: int | None
    swap_used: int | None
    pressure_level: str | None  # macOS: normal / warning / critical
    pressure_stall: float | None  # Linux: % of the last 10 s some task waited for memory
    wired: int | None  # macOS: bytes the kernel cannot page out
    compressed: int | None  # macOS: bytes held by the memory compressor
    mlx_version: str | None
    backend: str  # "metal", "cuda" or "cpu"
    gpu: str | None
    recommended_working_set: int | None  # Metal only
    mlx_memory_limit: int | None
    gpu_memory: int | None = None  # the device's memory as MLX reports it (a CUDA card's own memory)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def memory_pressure(self) -> str | None:
        """One phrase for the pressure, whatever the platform says it with."""
        if self.pressure_level is not None:
            return self.pressure_level
        if self.pressure_stall is not None:
            return f"{self.pressure_stall:.1f}% stalled (10 s)"
        return None


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def parse_vm_stat(text: str) -> dict[str, int]:
    """vm_stat output -> {'wired': bytes, 'compressed': bytes} (whatever of them it reports)."""
    page = re.search(r"page size of (\d+) bytes", text)
    size = int(page.group(1)) if page else 4096
    found = {}
    for key, label in (("wired", "Pages wired down"), ("compressed", "Pages occupied by compressor")):
        m = re.search(rf"{label}:\s+(\d+)", text)
        if m:
            found[key] = int(m.group(1)) * size
    return found


def parse_pressure_level(text: str | None) -> str | None:
    try:
        return PRESSURE_LEVELS.get(int(text)) if text is not None else None
    except ValueError:
        return None


def parse_psi(text: str) -> float | None:
    """/proc/pressure/memory -> the 'some' avg10 percentage."""
    m = re.search(r"^some\b.*?avg10=([\d.]+)", text, re.M)
    return float(m.group(1)) if m else None


def cpuinfo_value(*names: str) -> str | None:
    """The value of the first line of /proc/cpuinfo whose name starts with one of `names` (lowercase); None where
    there is no such line or no such file (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(names):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (avx2, avx512f, ...); empty elsewhere."""
    return set((cpuinfo_value("flags") or "").split())


def _linux_chip() -> str | None:
    return cpuinfo_value("model name", "hardware", "cpu model") or None


def _mlx() -> dict:
    info = {"mlx_version": None, "backend": "cpu", "gpu": None, "recommended_working_set": None,
            "mlx_memory_limit": None, "gpu_memory": None}
    try:
        import mlx.core as mx
    except Exception:  # no MLX at all: the workbench cannot run models, but info still works
        return info
    info["mlx_version"] = getattr(mx, "__version__", None)
    try:
        if mx.metal.is_available():
            info["backend"] = "metal"
        elif hasattr(mx, "cuda") and mx.cuda.is_available():
            info["backend"] = "cuda"
    except Exception:
        pass
    if info["backend"] != "cpu":
        device = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for probe in (getattr(mx, "device_info", None), getattr(mx.metal, "device_info", None)):
                try:
                    device = dict(probe()) if probe else {}
                except Exception:
                    device = {}
                if device:
                    break
        info["gpu"] = device.get("device_name") or None
        ws = device.get("max_recommended_working_set_size")
        info["recommended_working_set"] = int(ws) if ws and info["backend"] == "metal" else None
        memory = device.get("memory_size") or device.get("total_memory")
        info["gpu_memory"] = int(memory) if memory else None
    try:
        info["mlx_memory_limit"] = int(mx.get_memory_limit()) or None
    except Exception:
        pass
    return info


def detect(run: Runner = _run) -> HardwareInfo:
    system = platform.system()
    vm = psutil.virtual_memory()
    try:
        swap = psutil.swap_memory()
        swap_total, swap_used = swap.total, swap.used
    except (OSError, RuntimeError):
        swap_total = swap_used = None
    chip = pressure_level = pressure_stall = wired = compressed = None
    if system == "Darwin":
        chip = run(["sysctl", "-n", "machdep.cpu.brand_string"])
        pressure_level = parse_pressure_level(run(["sysctl", "-n", "kern.memorystatus_vm_pressure_level"]))
        stats = parse_vm_stat(run(["vm_stat"]) or "")
        wired, compressed = stats.get("wired"), stats.get("compressed")
    elif system == "Linux":
        chip = _linux_chip()
        try:
            pressure_stall = parse_psi(Path("/proc/pressure/memory").read_text())
        except OSError:
            pressure_stall = None
    return HardwareInfo(
        os=system or "unknown", os_version=platform.mac_ver()[0] if system == "Darwin" else platform.release(),
        arch=platform.machine() or "unknown", chip=chip, cpu_count=os.cpu_count(),
        total_ram=vm.total, available_ram=vm.available, swap_total=swap_total, swap_used=swap_used,
        pressure_level=pressure_level, pressure_stall=pressure_stall, wired=wired, compressed=compressed,
        **_mlx())
