"""The test files ./test.sh runs alone, after the others run in parallel: they time real processes against a
limit (a workbench's exit, key-to-paint latency, a signal's line), start ranks that share out the cores, or
train with torch's spinning threads, which a parallel neighbour slowed several times over.

tests/conftest.py marks their tests `serial`; ./test.sh runs `python tests/serial_files.py` for their paths, so
that each part collects only its own files (collecting the whole suite takes about 20 s of one core)."""

SERIAL_FILES = {"test_workbench_exit.py", "test_workbench_hangup.py", "test_signals.py", "test_key_latency.py",
                "test_distributed.py", "test_distributed_host.py", "test_training_run.py",
                "test_workbench_cancel_load.py"}
# Not here, though slow: tests that time nothing and start no ranks run in parallel. test_workbench_view.py's
# redraw test bounds the draws by the run's own elapsed time (a slower machine draws less often, not more), and
# test_memory_model_at_scale.py compares MLX's own peak, which counts this process's arrays only.
# test_hub_downloads.py's limits (a Ctrl-C said within 5 s, a silent Hub given up on after 2 s) are waits on a
# local server, far from what a busy core adds.

if __name__ == "__main__":
    print("\n".join(f"tests/{name}" for name in sorted(SERIAL_FILES)))
