#!/usr/bin/env bash
# Run quantbench from this checkout. The first run creates .venv and installs the project into it
# (again whenever pyproject.toml changes). Arguments go to the `quantbench` command; with none,
# the workbench opens on the built-in model.
set -euo pipefail
caller="$PWD"
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv ""
ensure_openblas

checkout="$PWD"
cd "$caller"  # relative paths (--out, --model, --image) are the caller's, not the checkout's
exec "$checkout/.venv/bin/quantbench" "$@"
