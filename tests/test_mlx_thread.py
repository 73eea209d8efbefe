"""The process's one MLX thread (core/mlx_thread.py): what callers in other threads get from it, and a
clean exit after a pooled thread handed it compiled MLX work."""

import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

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


EXIT_SCRIPT = textwrap.dedent("""
    import asyncio
    import mlx.core as mx
    from quantbench.core.blocks.fast_math import silu
    from quantbench.core.mlx_thread import run_in_mlx_thread

    def work():  # each shape leaves an entry in the running thread's cache of compiled graphs
        return sum(mx.sum(silu(mx.arange(n, dtype=mx.float32))).item() for n in range(1, 51))

    async def main():  # as Textual runs a thread worker: in asyncio's executor, joined as asyncio.run ends
        return await asyncio.get_running_loop().run_in_executor(None, run_in_mlx_thread, work)

    print(round(asyncio.run(main())))
""")


def test_exiting_after_a_pooled_thread_ran_compiled_work_through_it_is_clean_every_time():
    """Run in the pooled thread itself, this work aborted 9 of 10 exits ('terminate called without an
    active exception', status 134): MLX released the thread's compiled graphs as the interpreter finalized."""
    def one_exit(_) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one_exit, range(6)))
    assert [(r.returncode, r.stderr.strip()[-200:]) for r in results] == [(0, "")] * 6
    assert len({r.stdout for r in results}) == 1
