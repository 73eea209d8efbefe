"""The process's one MLX thread (core/mlx_thread.py): what callers in other threads get from it, and a
clean exit after a pooled thread handed it compiled MLX work."""

import subprocess
import sys
import textwrap
import threading

import mlx.core as mx
import pytest

from quantbench.core.errors import InvalidRequest
from quantbench.core.mlx_thread import MLXThread


@pytest.fixture
def worker():
    thread = MLXThread("mlx-test")
    yield thread
    thread.stop()


def test_a_call_returns_its_result_and_raises_its_error_in_the_caller(worker):
    assert worker.call(lambda a, b=0: (mx.array(a) + b).item(), 2, b=3) == 5

    def refuse():
        raise InvalidRequest("--steps must be at least 1")

    with pytest.raises(InvalidRequest, match="--steps must be at least 1"):
        worker.call(refuse)
    assert worker.call(lambda: "still serving") == "still serving"


def test_a_stream_made_in_one_call_still_works_in_a_call_from_another_thread(worker):
    """MLX's streams belong to the thread that made them: run from two pooled threads, the second run's
    evaluation on the first's stream failed ('There is no Stream(cpu, N) in current thread')."""
    stream = worker.call(mx.new_stream, mx.cpu)

    def on_stream() -> float:
        with mx.stream(stream):
            return mx.sum(mx.arange(4) * 2).item()

    results = []
    for _ in range(2):  # each call from a thread of its own, as two runs of the workbench can be
        caller = threading.Thread(target=lambda: results.append(worker.call(on_stream)))
        caller.start()
        caller.join()
    assert results == [12.0, 12.0]


def test_a_call_from_the_thread_itself_runs_at_once(worker):
    assert worker.call(lambda: worker.call(lambda: "inner")) == "inner"


def test_stop_ends_the_thread_and_a_later_call_starts_another(worker):
    first = worker.call(threading.current_thread)
    worker.stop()
    assert not worker.alive and not first.is_alive()
    assert worker.call(threading.current_thread) is not first


# Run in the calling threads themselves, each of these aborted about half the exits or more ('terminate called
# without an active exception', status 134): MLX released the thread's state as the interpreter finalized.
EXITS = 10
EXIT_SCRIPTS = {
    "compiled graphs": """
        import threading
        import mlx.core as mx
        from quantbench.core.blocks.fast_math import silu
        from quantbench.core.mlx_thread import run_in_mlx_thread

        def work():  # each shape leaves an entry in the running thread's cache of compiled graphs
            return sum(mx.sum(silu(mx.arange(n, dtype=mx.float32))).item() for n in range(1, 51))

        caller = threading.Thread(target=run_in_mlx_thread, args=(work,))  # as a worker's pooled thread
        caller.start()
        caller.join()
        print("done")
    """,
    "random keys": """
        import threading
        import mlx.nn as nn
        from quantbench.core.mlx_thread import run_in_mlx_thread

        def work():  # nn.Linear draws its weights from the running thread's default random key
            return len([nn.Linear(8, 8) for _ in range(50)])

        callers = [threading.Thread(target=run_in_mlx_thread, args=(work,)) for _ in range(8)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        print(len(callers))
    """,
}


@pytest.mark.parametrize("state", list(EXIT_SCRIPTS))
def test_exiting_after_other_threads_ran_mlx_work_through_it_is_clean_every_time(state):
    script = textwrap.dedent(EXIT_SCRIPTS[state])

    def one_exit() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    results = [one_exit() for _ in range(EXITS)]  # one at a time: a busy machine hides the race
    assert [(r.returncode, r.stderr.strip()[-200:]) for r in results] == [(0, "")] * EXITS
    assert len({r.stdout for r in results}) == 1
