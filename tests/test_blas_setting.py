"""QUANTBENCH_BLAS: 'reference' keeps MLX's own BLAS; QUANTBENCH_MALLOC: 'glibc' keeps glibc's malloc settings;
QUANTBENCH_TILE_KERNEL: 'off' runs the slices; QUANTBENCH_ATTENTION_KERNEL and QUANTBENCH_ELEMENTWISE_KERNEL: 'off' runs MLX's ops; a value quantbench does not take is refused in one line.
OpenBLAS's kernels follow the CPU's flags unless OPENBLAS_CORETYPE names them or QUANTBENCH_BLAS=detected leaves
them to OpenBLAS."""

import json
import subprocess
import sys

import pytest

from quantbench.core.cpu_blas import core_for_cpu
from quantbench.core.hardware import cpu_flags, cpuinfo_value


def quantbench(tmp_path, value: str, name: str = "QUANTBENCH_BLAS", **more: str) -> subprocess.CompletedProcess:
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", name: value, **more}
    return subprocess.run([sys.executable, "-m", "quantbench.cli.main", "info", "--json"], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("name,value,taken", [
    ("QUANTBENCH_BLAS", "refrence", "reference"), ("QUANTBENCH_BLAS", "openblas", "reference"),
    ("QUANTBENCH_BLAS", "garbage", "reference"), ("QUANTBENCH_MALLOC", "glib", "glibc"),
    ("QUANTBENCH_MALLOC", "kept", "glibc"), ("QUANTBENCH_MALLOC", "1", "glibc"),
    ("QUANTBENCH_TILE_KERNEL", "0", "off"), ("QUANTBENCH_TILE_KERNEL", "no", "off"),
    ("QUANTBENCH_TILE_KERNEL", "slices", "off"), ("QUANTBENCH_ATTENTION_KERNEL", "mlx", "off"),
    ("QUANTBENCH_ELEMENTWISE_KERNEL", "0", "off")])
def test_an_unknown_setting_is_refused_in_one_line(name, value, taken, tmp_path):
    done = quantbench(tmp_path, value, name)
    assert done.returncode == 2 and json.loads(done.stdout) == {"error": done.stderr.strip(), "exit_code": 2}
    assert done.stderr.count("\n") == 1 and f"{name}='{value}'" in done.stderr and f"'{taken}'" in done.stderr


def test_reference_is_taken_in_any_case(tmp_path):
    done = quantbench(tmp_path, "Reference")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cpu_blas"]["blas"] == "reference"


def test_glibc_malloc_setting_is_taken(tmp_path):
    done = quantbench(tmp_path, "GLIBC", "QUANTBENCH_MALLOC")
    assert done.returncode == 0, done.stderr


def test_the_tile_kernel_switched_off_or_without_openblas_is_reported(tmp_path):
    done = quantbench(tmp_path, "OFF", "QUANTBENCH_TILE_KERNEL")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cpu_tile_kernel"]["state"] == "off"
    done = quantbench(tmp_path, "reference")
    kernel = json.loads(done.stdout)["cpu_tile_kernel"]
    assert kernel["state"] == "unavailable" and "OpenBLAS" in kernel["detail"]


def test_openblas_held_to_an_older_core_is_named_and_noted(tmp_path):
    """An environment that sets OPENBLAS_CORETYPE=Haswell (AVX2) on an AVX-512 CPU about halves MLX's float32
    matmul speed; info names the setting and says what to change. Without it, no note."""
    held = quantbench(tmp_path, "Haswell", "OPENBLAS_CORETYPE")
    assert held.returncode == 0, held.stderr
    blas = json.loads(held.stdout)["cpu_blas"]
    if blas["blas"] != "openblas":
        pytest.skip(f"no system OpenBLAS here: {blas['detail']}")
    assert "(Haswell, chosen by OPENBLAS_CORETYPE)" in blas["detail"]
    if "avx512f" in cpu_flags():
        assert blas["note"].startswith("OPENBLAS_CORETYPE=Haswell holds OpenBLAS") and "unset it" in blas["note"]
        text = subprocess.run([sys.executable, "-m", "quantbench.cli.main", "info"], capture_output=True, text=True,
                              timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                                                "OPENBLAS_CORETYPE": "Haswell"}).stdout
        assert blas["note"] in text
    else:
        assert blas["note"] == ""
    unset = quantbench(tmp_path, "", "OPENBLAS_CORETYPE")
    blas = json.loads(unset.stdout)["cpu_blas"]
    assert "chosen by OPENBLAS_CORETYPE" not in blas["detail"] and blas["note"] == ""


def test_an_openblas_coretype_openblas_does_not_know_is_reported_as_not_taken(tmp_path):
    """OpenBLAS runs a core of its own when OPENBLAS_CORETYPE names no core it knows (0.3.21 runs the one a blank
    OPENBLAS_CORETYPE gets, which need not be the one it detects with the variable unset); info must not claim the
    setting chose it, nor note that the setting holds OpenBLAS back."""
    ignored = quantbench(tmp_path, "NoSuchCore", "OPENBLAS_CORETYPE")
    assert ignored.returncode == 0, ignored.stderr
    blas = json.loads(ignored.stdout)["cpu_blas"]
    if blas["blas"] != "openblas":
        pytest.skip(f"no system OpenBLAS here: {blas['detail']}")
    assert "chosen by" not in blas["detail"]
    assert "OPENBLAS_CORETYPE=NoSuchCore not taken" in blas["detail"] and blas["note"] == ""
    detected = quantbench(tmp_path, "detected", OPENBLAS_CORETYPE="")
    assert blas["core"] == json.loads(detected.stdout)["cpu_blas"]["core"]


AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}


@pytest.mark.parametrize("flags,vendor,core", [
    (AVX512 | {"avx2", "fma", "avx512_bf16", "amx_tile"}, "GenuineIntel", "Cooperlake"),
    (AVX512 | {"avx2", "fma", "avx512_bf16"}, "AuthenticAMD", "Cooperlake"),  # Zen 4 and 5
    (AVX512 | {"avx2", "fma"}, "GenuineIntel", "SkylakeX"),
    ({"avx512f", "avx2", "fma"}, "GenuineIntel", "Haswell"),  # AVX-512 without the parts SkylakeX's kernels use
    ({"avx2", "fma"}, "AuthenticAMD", "Zen"), ({"avx2", "fma"}, "HygonGenuine", "Zen"),
    ({"avx2", "fma"}, "GenuineIntel", "Haswell"), ({"avx", "sse4_2"}, "GenuineIntel", ""), (set(), "", "")])
def test_openblas_kernels_follow_the_cpus_flags(flags, vendor, core):
    assert core_for_cpu(flags, vendor) == core


def test_unset_openblas_runs_the_kernels_for_the_cpus_flags_and_detected_leaves_them_to_openblas(tmp_path):
    """OpenBLAS 0.3.21 ran Prescott's SSE3 kernels on an Intel Xeon VM whose model it did not know (4.4x slower
    float32 matmuls than the AVX-512 ones its flags allow): unless told otherwise, quantbench picks by the flags,
    for OpenBLAS's load alone (the processes it starts choose for themselves)."""
    chosen = json.loads(quantbench(tmp_path, "", "OPENBLAS_CORETYPE").stdout)["cpu_blas"]
    if chosen["blas"] != "openblas":
        pytest.skip(f"no system OpenBLAS here: {chosen['detail']}")
    expected = core_for_cpu(cpu_flags(), cpuinfo_value("vendor_id") or "")
    if expected:
        assert chosen["core"] == expected and chosen["detail"].endswith(
            f"({expected}, chosen by quantbench for this CPU's flags)")
    else:
        assert "chosen by" not in chosen["detail"]
    for value in ("detected", "Detected"):
        done = quantbench(tmp_path, value, OPENBLAS_CORETYPE="")
        assert done.returncode == 0, done.stderr
        assert "chosen by" not in json.loads(done.stdout)["cpu_blas"]["detail"]
    show = "import os, quantbench.core; print(repr(os.environ.get('OPENBLAS_CORETYPE')))"
    for before, after in (({}, "None"), ({"OPENBLAS_CORETYPE": " "}, "' '")):  # as it was, a blank one too
        left = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, timeout=120,
                              env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **before})
        assert left.stdout.strip() == after, left.stderr
