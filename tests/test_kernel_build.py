"""core/cpu_kernels.py: a C kernel is built from the source its module was imported with."""

import ctypes
import json
import subprocess
import sys

import pytest

from quantbench.core import cpu_kernels
from quantbench.core.cpu_kernels import CompiledKernel

pytestmark = pytest.mark.skipif(cpu_kernels.compiler()[0] is None, reason="no C compiler here")


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


def test_each_compilers_build_is_kept_and_a_compiler_upgraded_in_place_builds_again(tmp_path, monkeypatch):
    """CC switched from one compiler to another and back built the kernel every time: each build deleted the other
    compiler's. Now each compiler's build is kept and loaded again, and one replaced by a new version builds anew."""
    real, _ = cpu_kernels.compiler()
    runs = tmp_path / "runs"

    def fake(name: str, version: str) -> str:
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\n# version {version}\necho {name} >> {runs}\nexec {real[0]} \"$@\"\n")
        path.chmod(0o755)
        return str(path)

    monkeypatch.setenv(cpu_kernels.FOLDER_ENV, str(tmp_path / "cache"))
    source = tmp_path / "adder.c"
    source.write_text("int add(int a, int b) { return a + b; }\n")
    compilers = {"one": fake("cc-one", "1.0"), "two": f"{fake('cc-two', '1.0')} -O1"}

    def build(name: str) -> None:  # as a new process does with CC set
        monkeypatch.setenv("CC", compilers[name])
        kernel = CompiledKernel(source, "add", [ctypes.c_int, ctypes.c_int], "QUANTBENCH_TEST_ADDER")
        assert kernel.ready(), kernel.status()
        assert kernel.function(2, 3) == 5 and f"built by cc-{name}" in kernel.status().detail

    for name in ("one", "two", "one", "two", "one"):
        build(name)
    assert runs.read_text().split() == ["cc-one", "cc-two"]  # was one, two, one, two, one
    assert len(list((tmp_path / "cache").glob("adder-*.so"))) == 2
    fake("cc-one", "1.1")  # upgraded: built again, its old build replaced
    build("one")
    build("two")
    assert runs.read_text().split() == ["cc-one", "cc-two", "cc-one"]
    assert len(list((tmp_path / "cache").glob("adder-*.so"))) == 2


def _info(tmp_path, **env) -> dict:
    environment = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **env}
    done = subprocess.run([sys.executable, "-m", "quantbench.cli.main", "info", "--json"], capture_output=True,
                          text=True, timeout=120, env=environment)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


KERNELS = {"cpu_attention_kernel": "QUANTBENCH_ATTENTION_KERNEL", "cpu_elementwise_kernel": "QUANTBENCH_ELEMENTWISE_KERNEL"}


def test_info_says_whether_each_kernel_runs_and_why_not(tmp_path):
    """The attention and elementwise kernels (the tile kernel's own test: tests/test_blas_setting.py): ready, switched
    off by their own setting (any case) and no other's, or unavailable with the reason."""
    assert all(_info(tmp_path)[key]["state"] == "ready" for key in KERNELS)
    for key, switch in KERNELS.items():
        info = _info(tmp_path, **{switch: "Off"})
        assert info[key] == {"state": "off", "detail": f"{switch}=off"}
        assert all(info[other]["state"] == "ready" for other in KERNELS if other != key)
    missing = _info(tmp_path, CC=str(tmp_path / "no-such-cc"), XDG_CACHE_HOME=str(tmp_path / "empty"))
    for key in KERNELS:
        assert missing[key]["state"] == "unavailable" and "no-such-cc" in missing[key]["detail"]
