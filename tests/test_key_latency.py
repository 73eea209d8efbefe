"""The workbench stays responsive while the engine works: key-to-paint latency during a run."""

import pytest

from quantbench.tui.latency import measure_key_latency, typed_letters


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QUANTBENCH_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path


async def test_typing_during_a_run_repaints_promptly(dirs):
    result = await measure_key_latency("demo", keys=20)
    print(result.line())
    assert len(result.milliseconds) == 20 and len(result.idle_milliseconds) == 20
    assert result.steps_during >= 1  # the engine really stepped while the keys were typed
    assert result.typed.endswith(typed_letters(20))  # and no key was lost
    assert 0 < result.idle_p95 and 0 < result.p95 < 60_000
