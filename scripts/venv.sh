# Shared by quantbench.sh and test.sh: create .venv and (re)install the project when needed.
# The stamp records what was installed, so a changed pyproject.toml or a new extra reinstalls.
ensure_venv() {
    local extra="$1"
    local stamp=".venv/.quantbench-installed"
    local hash want
    hash="$(sha256sum pyproject.toml | cut -c1-16)"
    want="${hash}${extra}"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if [ ! -f "$stamp" ] || ! grep -qxF -- "$want" "$stamp"; then
        echo "setting up .venv (quantbench${extra}) ..." >&2
        # pip compiles the ~12,000 installed files in one process (about 60 CPU s with torch); compileall spreads
        # them over the cores. Compiled here, not left to the first imports: PYTHONDONTWRITEBYTECODE=1 would
        # then compile torch again in every test process.
        .venv/bin/python -m pip install --quiet --no-compile -e ".${extra}" >&2
        .venv/bin/python -m compileall -qq -j 0 .venv/lib >/dev/null 2>&1 || true  # as with pip, a file that does not compile stops nothing
        # An install with an extra includes the plain one.
        printf '%s\n%s\n' "$want" "$hash" >> "$stamp"
    fi
}

# MLX's CPU backend on Linux is tens of times faster with the system OpenBLAS (core/cpu_blas.py).
# Install it where we can (root with apt); otherwise say how.
ensure_openblas() {
    [ "$(uname -s)" = "Linux" ] || return 0
    # Not `ldconfig -p | grep -q`: grep stops at the first match, ldconfig then writes into a closed pipe, and
    # under pipefail that SIGPIPE made a library that is there look missing (and apt-get ran again).
    if [[ "$(ldconfig -p 2>/dev/null)" == *"libopenblas.so.0"* ]]; then return 0; fi
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
        echo "installing libopenblas0-pthread (fast CPU matmul for MLX) ..." >&2
        apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1; } \
            || echo "could not install libopenblas0-pthread; MLX will use its slow reference BLAS" >&2
    else
        echo "note: install libopenblas0-pthread (or your distribution's OpenBLAS) for a much faster CPU matmul" >&2
    fi
}
