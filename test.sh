#!/usr/bin/env bash
# Run the test suite. Creates .venv with the test extra (pytest and the reference implementation:
# torch 2.13.0 CPU, diffusers, transformers) on first use. Arguments go to pytest (as given, one run);
# without them the whole suite runs, in two parts (below).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv "[test]"
ensure_openblas
# Python's bytecode cache on, whatever the environment says: with PYTHONDONTWRITEBYTECODE set, every process the
# tests start (hundreds) compiled quantbench's own modules again (0.3-0.5 s of a core each), and each pytest worker
# rewrote every test file's asserts again. ensure_venv compiled the installed packages already.
unset PYTHONDONTWRITEBYTECODE
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
# The whole suite: tests not marked serial in parallel, one worker a core (at most 4), then the serial ones
# alone (tests/serial_files.py says which and why). Both parts always run; the status is the first failure's.
# Each part collects only its own files: collecting every file takes about 20 s of a core.
workers=$(nproc 2>/dev/null || echo 1)
workers=$(( workers > 4 ? 4 : workers ))
status=0
if [ "$workers" -gt 1 ]; then
    mapfile -t serial < <(.venv/bin/python tests/serial_files.py)
    [ "${#serial[@]}" -gt 0 ] || { echo "tests/serial_files.py listed no files" >&2; exit 1; }
    .venv/bin/python -m pytest -q -n "$workers" -m "not serial" "${serial[@]/#/--ignore=}" || status=$?
    .venv/bin/python -m pytest -q -m serial "${serial[@]}" || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }
else
    .venv/bin/python -m pytest -q || status=$?
fi
exit "$status"
