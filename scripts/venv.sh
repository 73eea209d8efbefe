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
        .venv/bin/python -m pip install --quiet -e ".${extra}" >&2
        # An install with an extra includes the plain one.
        printf '%s\n%s\n' "$want" "$hash" >> "$stamp"
    fi
}
