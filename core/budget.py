"""A machine's memory budgets: what a run may take on it.

Budgets (for a machine with RAM bytes of unified memory)
    comfortable = 60% of RAM (and never above Metal's recommended working set when it is known).
        The predictions are MLX's *active* peak; the process also keeps MLX's buffer cache (the
        previous phase's activations, ~10% more), and macOS caps the GPU working set at 2/3 of RAM
        on Macs below 36 GB, so 0.6 x RAM is what a run can take while the OS and a browser stay
        responsive. This is what a recommendation must fit.
    tight = Metal's recommended working set (reported by the device; estimated as 2/3 of RAM below
        36 GB and 3/4 from 36 GB, as macOS sets it): beyond it the GPU pages. A plan between the
        two fits only with other apps closed, and loading must fit too. Without unified memory (a
        CPU-only machine, or a CUDA card's own memory) tight is 90% of the memory.
    minimum = RAM - 0.75 GB: the bare minimum, nothing else running, swap allowed for others; the
        benchmark seed's "minimum RAM" table follows this rule (core/recommend.py, minimum_ram_gb).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InvalidRequest
from .memory_model import GiB

COMFORTABLE_FRACTION = 0.60
MINIMUM_RESERVE = int(0.75 * GiB)
MAX_RAM_GB = 4096  # larger than any single machine MLX runs on
MIN_RAM_GB = 1


@dataclass(frozen=True)
class Budget:
    ram: int  # the memory models run in: unified memory on a Mac, system RAM on the CPU, VRAM on CUDA
    comfortable: int
    tight: int
    minimum: int
    working_set: int | None = None  # as the device reports it (None: estimated)
    source: str = "--ram"
    tight_rule: str = "GPU working set"

    def to_dict(self) -> dict:
        return {"ram_bytes": self.ram, "comfortable_bytes": self.comfortable, "tight_bytes": self.tight,
                "minimum_bytes": self.minimum, "working_set_bytes": self.working_set, "source": self.source,
                "tight_rule": self.tight_rule}


def check_ram_gb(ram_gb: float, as_typed: str | None = None) -> float:
    """Refuse zero, negative, non-finite and absurd sizes with a one-line error."""
    if not math.isfinite(ram_gb) or not MIN_RAM_GB <= ram_gb <= MAX_RAM_GB:
        raise InvalidRequest(f"--ram {as_typed or f'{ram_gb:g}'}: give the machine's memory in GB, between "
                             f"{MIN_RAM_GB} and {MAX_RAM_GB}")
    return float(ram_gb)


def estimated_working_set(ram: int) -> int:
    """macOS's recommended GPU working set: 2/3 of RAM below 36 GB, 3/4 from 36 GB."""
    return int(ram * (0.75 if ram >= 36 * GiB else 2 / 3))


def budget_for(ram: int, working_set: int | None = None, source: str = "--ram", unified: bool = True) -> Budget:
    """Budgets for `ram` bytes. unified=False (a CPU-only machine, or a CUDA card's own memory): no
    macOS working set, so a tight fit is 90% of the memory."""
    if unified:
        tight, rule = working_set or estimated_working_set(ram), "GPU working set"
    else:
        tight, rule = int(0.9 * ram), "90% of memory"
    comfortable = min(int(COMFORTABLE_FRACTION * ram), tight)
    return Budget(ram, comfortable, tight, max(ram - MINIMUM_RESERVE, 0), working_set, source, rule)


def budget_from_gb(ram_gb: float, unified: bool = True) -> Budget:
    return budget_for(int(check_ram_gb(ram_gb) * GiB), unified=unified)


def budget_from_hardware(hardware) -> Budget:
    """The budget of the machine `hardware.detect()` described: unified memory capped by Metal's working
    set on a Mac, the card's memory on CUDA, system RAM otherwise."""
    if hardware.backend == "cuda" and hardware.gpu_memory:
        return budget_for(hardware.gpu_memory, source="detected", unified=False)
    if not hardware.total_ram:
        raise InvalidRequest("this machine's memory size is unknown: give it with --ram GB")
    return budget_for(hardware.total_ram, hardware.recommended_working_set, source="detected",
                      unified=hardware.backend == "metal" or hardware.os == "Darwin")
