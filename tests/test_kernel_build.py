"""core/cpu_kernels.py: a C kernel is built from the source its module was imported with."""

import ctypes

import pytest

from quantbench.core import cpu_kernels
from quantbench.core.cpu_kernels import CompiledKernel

pytestmark = pytest.mark.skipif(cpu_kernels.compiler() is None, reason="no C compiler here")


def test_a_source_changed_after_import_is_not_what_gets_built(tmp_path, monkeypatch):
    """quantbench upgraded under a running workbench: the kernel its first product builds must take the
    arguments that process passes, not the new file's (a mismatch calls through a wrong pointer)."""
    monkeypatch.setenv(cpu_kernels.FOLDER_ENV, str(tmp_path / "cache"))
    source = tmp_path / "adder.c"
    source.write_text("int add(int a, int b) { return a + b; }\n")
    kernel = CompiledKernel(source, "add", [ctypes.c_int, ctypes.c_int], "QUANTBENCH_TEST_ADDER")
    source.write_text("int add(int a, int b, int c) { return a * b * c; }\n")
    assert kernel.ready(), kernel.status()
    assert kernel.function(2, 3) == 5


def test_a_missing_source_leaves_the_kernel_unavailable_not_the_import_broken(tmp_path):
    kernel = CompiledKernel(tmp_path / "gone.c", "add", [], "QUANTBENCH_TEST_ADDER")
    assert not kernel.expected() and not kernel.ready()
    assert kernel.status().state == "unavailable" and "gone.c" in kernel.status().detail
