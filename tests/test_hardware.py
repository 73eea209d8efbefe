"""Hardware detection: real figures on this machine, unknown (None) where the platform lacks them."""

import json
import platform

import mlx.core as mx
import psutil

from quantbench.core import hardware
from quantbench.core.hardware import detect, parse_pressure_level, parse_psi, parse_vm_stat

VM_STAT = """Mach Virtual Memory Statistics: (page size of 16384 bytes)
Pages free:                               12345.
Pages active:                            400000.
Pages wired down:                        100000.
Pages occupied by compressor:             65536.
"""


def test_detects_this_machine():
    hw = detect()
    assert hw.total_ram == psutil.virtual_memory().total
    assert 0 < hw.available_ram <= hw.total_ram
    expected = "metal" if mx.metal.is_available() else ("cuda" if mx.cuda.is_available() else "cpu")
    assert hw.backend == expected
    assert hw.mlx_version == mx.__version__
    json.dumps(hw.to_dict())  # plain data


def test_what_the_platform_lacks_is_unknown_not_guessed():
    hw = detect()
    if hw.backend != "metal":
        assert hw.recommended_working_set is None
    if platform.system() != "Darwin":
        assert hw.pressure_level is None and hw.wired is None and hw.compressed is None


def test_macos_probes(monkeypatch):
    answers = {"machdep.cpu.brand_string": "Apple M3 Max", "kern.memorystatus_vm_pressure_level": "2"}

    def run(cmd):
        return VM_STAT if cmd == ["vm_stat"] else answers.get(cmd[-1])

    monkeypatch.setattr(hardware.platform, "system", lambda: "Darwin")
    hw = detect(run)
    assert hw.chip == "Apple M3 Max"
    assert hw.pressure_level == "warning" and hw.memory_pressure == "warning"
    assert hw.wired == 100000 * 16384 and hw.compressed == 65536 * 16384
    assert hw.pressure_stall is None


def test_macos_without_the_commands_reports_unknowns(monkeypatch):
    monkeypatch.setattr(hardware.platform, "system", lambda: "Darwin")
    hw = detect(lambda cmd: None)
    assert (hw.chip, hw.pressure_level, hw.wired, hw.compressed, hw.memory_pressure) == (None,) * 5
    assert hw.total_ram > 0  # psutil still answers


def test_parsers():
    assert parse_vm_stat(VM_STAT) == {"wired": 100000 * 16384, "compressed": 65536 * 16384}
    assert parse_vm_stat("garbage") == {}
    assert [parse_pressure_level(v) for v in ("1", "2", "4", "7", "x", None)] == \
        ["normal", "warning", "critical", None, None, None]
    assert parse_psi("some avg10=1.50 avg60=0.20 avg300=0.00 total=10\nfull avg10=0.00 avg60=0 avg300=0 total=0") \
        == 1.5
    assert parse_psi("") is None
