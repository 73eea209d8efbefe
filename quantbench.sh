#!/usr/bin/env bash
# Run quantbench from this checkout. The first run creates .venv and installs the project into it
# (again whenever pyproject.toml changes). Arguments go to the `quantbench` command; with none,
# the workbench opens on the built-in model.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv ""
ensure_openblas

if [ $# -eq 0 ] && [ ! -f core/builtin/models/demo/model_index.json ]; then
    # Until the built-in trained model ships, the workbench opens on a random-weight tiny FLUX.2
    # written by quantbench itself: every stage runs, the pictures are noise.
    [ -d .cache/random-tiny ] || .venv/bin/quantbench random-model --out .cache/random-tiny
    exec .venv/bin/quantbench workbench --model .cache/random-tiny
fi
exec .venv/bin/quantbench "$@"
