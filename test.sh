#!/usr/bin/env bash
# Run the test suite. Creates .venv with the test extra (pytest and the reference implementation:
# torch 2.13.0 CPU, diffusers, transformers) on first use. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv "[test]"
ensure_openblas
exec .venv/bin/python -m pytest -q "$@"
