"""The C kernels' helper threads (core/cpu_threads.h): started once and kept for later calls, shared safely by
calls from several Python threads at once, and started afresh in a forked child (whose parent's helpers do not
exist there)."""

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import quantbench.core  # noqa: F401  (loads OpenBLAS before mlx)

from quantbench.core.blocks import elementwise_kernel

pytestmark = pytest.mark.skipif(not elementwise_kernel.ready(),
                                reason=f"no elementwise kernel here: {elementwise_kernel.status().detail}")

ROWS, WIDTH = 512, 256


def _swiglu(x: np.ndarray, threads: int) -> np.ndarray:
    """The kernel's SwiGLU of x's (ROWS, 2 * WIDTH) halves on `threads` threads, straight through ctypes (no MLX:
    a forked child has none of MLX's threads)."""
    out = np.zeros((ROWS, WIDTH), np.float32)
    elementwise_kernel._ACTIVATION.function(
        elementwise_kernel.ACTIVATIONS["swiglu"], x.ctypes.data, 0, 2 * WIDTH, x[:, WIDTH:].ctypes.data, 0,
        2 * WIDTH, out.ctypes.data, 0, WIDTH, 1, ROWS, WIDTH, threads, 1)
    return out


def _input(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, 2 * WIDTH)).astype(np.float32)


def _helpers_now() -> int:
    """The process's threads named as the kernels' helpers."""
    names = []
    for thread in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{thread}/comm").read().strip())
        except OSError:  # a thread that ended while listed
            pass
    return names.count("quantbench-cpu")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names in /proc")
def test_later_calls_reuse_the_helpers_the_first_call_started():
    x = _input(0)
    expected = _swiglu(x, 1)
    assert np.array_equal(_swiglu(x, 6), expected)
    helpers = _helpers_now()
    assert helpers >= 5
    for _ in range(50):
        assert np.array_equal(_swiglu(x, 6), expected)
    assert _helpers_now() == helpers


def test_calls_from_several_threads_at_once_each_get_their_own_answer():
    inputs = [_input(seed) for seed in range(4)]
    expected = [_swiglu(x, 1) for x in inputs]
    wrong: list[int] = []

    def call_repeatedly(index: int) -> None:
        for _ in range(40):
            if not np.array_equal(_swiglu(inputs[index], 3), expected[index]):
                wrong.append(index)

    callers = [threading.Thread(target=call_repeatedly, args=(i,)) for i in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=60)
    assert not any(caller.is_alive() for caller in callers), "a call never returned"
    assert wrong == []


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_helpers_of_its_own():
    x = _input(1)
    expected = _swiglu(x, 1)
    assert np.array_equal(_swiglu(x, 4), expected)  # the parent's helpers exist before the fork
    child = os.fork()
    if child == 0:  # the child: the parent's helpers are not here; a call that waited for them would hang
        os._exit(0 if np.array_equal(_swiglu(x, 4), expected) else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    pytest.fail("the forked child's kernel call hung")
