"""The CPUs a benchmark's process may run on, for torch's thread count (shared by the scripts beside it)."""

import os


def usable_cpus() -> int:
    """taskset's or a container's mask, which torch does not count itself (os.cpu_count() is the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
