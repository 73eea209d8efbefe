"""Long-lived threads for MLX work that other threads start (the workbench's runs and its hardware pane).

MLX keeps state per thread. Each thread has its own streams: an array or stream made in one thread
cannot be evaluated in another ("There is no Stream(cpu, N) in current thread"). And each thread keeps
Python objects of its own: its cache of mx.compile'd graphs, and its default random key (drawn from by
mx.random without a key, as every nn.Linear does when it is built). When such a thread ends, these are
destroyed after the thread's Python state is gone, taking the GIL again to release them. If the
interpreter has begun to finalize by then, Python ends the thread inside that destructor and the C++
runtime aborts the whole process: "terminate called without an active exception", status 134. Thread
pools end their threads at exactly that moment: asyncio's default executor, which Textual's thread
workers run in, is joined just before the interpreter finalizes, so quitting the workbench after a run
(or after its hardware pane had built the catalog's models to count them) aborted about half the time.

So that work runs here instead: threads that live as long as the workbench, whose streams and compiled
graphs stay valid from call to call. When they are stopped (the workbench's end; at the latest an atexit
hook: after the interpreter has joined its other threads, before it finalizes) each clears its MLX state
with mx.clear_streams() and ends while the interpreter is whole, so nothing is left for a destructor that
would need Python.
"""

from __future__ import annotations

import atexit
import queue
import threading
from concurrent.futures import Future
from typing import Callable, TypeVar

import mlx.core as mx

T = TypeVar("T")

_STOP = None


class MLXThread:
    """Runs calls one at a time on a thread of its own, started at the first call."""

    def __init__(self, name: str = "mlx") -> None:
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        atexit.register(self.stop)

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """fn(*args, **kwargs) run on the thread: its result, or its exception raised here. A call made from
        the thread itself runs at once (waiting for the thread there would wait forever)."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        future: Future = Future()
        self._started().put((fn, args, kwargs, future))
        return future.result()

    def stop(self) -> None:
        """Let the running call finish, clear the thread's MLX state and end it; the next call starts a new one."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            thread.join()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _started(self) -> queue.SimpleQueue:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
            return self._jobs

    def _serve(self) -> None:
        try:
            while (job := self._jobs.get()) is not _STOP:
                fn, args, kwargs, future = job
                job = None  # the call's arguments (arrays, a pipeline) are not kept while waiting for the next
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
                        future.set_exception(exc)
                fn = args = kwargs = future = None
        finally:
            mx.clear_streams()  # this thread's streams and compiled graphs, while Python can still release them


# The engine's jobs, one at a time (one model in memory); and quick MLX work that must not wait behind them
# (the hardware pane's recommendations build each catalog model's modules to count their bytes).
ENGINE = MLXThread("mlx-engine")
QUICK = MLXThread("mlx-quick")


def stop_mlx_threads() -> None:
    """End both threads once their calls are done, with their MLX state (a later call starts them again)."""
    ENGINE.stop()
    QUICK.stop()


def run_in_mlx_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs) on the engine's MLX thread (see the module's docstring), waited for."""
    return ENGINE.call(fn, *args, **kwargs)
