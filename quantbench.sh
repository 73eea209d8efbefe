#!/usr/bin/env bash
# Run quantbench from this checkout. The first run creates .venv and installs the project into it
# (again whenever pyproject.toml changes). Arguments go to the `quantbench` command; with none,
# the workbench opens on the built-in model.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv ""
ensure_openblas

exec .venv/bin/quantbench "$@"
