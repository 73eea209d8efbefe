#!/usr/bin/env bash
# Run quantbench from this checkout. The first run creates .venv and installs the project into it
# (again whenever pyproject.toml changes). Arguments go to the `quantbench` command.
# With no arguments: the quickstart (see README).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv ""
ensure_openblas

if [ $# -eq 0 ]; then
    # Until the built-in trained model and the workbench land, the quickstart is one generation on
    # a random-weight tiny FLUX.2 written by quantbench itself: every stage runs, the picture is noise.
    [ -d .cache/random-tiny ] || .venv/bin/quantbench random-model --out .cache/random-tiny
    mkdir -p out
    exec .venv/bin/quantbench generate --model .cache/random-tiny --prompt "a small red star on the left" \
        --width 256 --height 256 --steps 4 --out out/quickstart.png --overwrite
fi
exec .venv/bin/quantbench "$@"
