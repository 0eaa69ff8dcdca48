#!/usr/bin/env bash
# Create .venv with Python >= 3.12 when available (current shap, esda and libpysal need it;
# 3.11 works with older releases) and install territoria with its dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local c
    for c in "${PYTHON:-}" python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 \
             /usr/local/bin/python3.12 /usr/bin/python3.12 python3.13 python3 python3.11; do
        [ -n "$c" ] || continue
        if "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    echo "no Python >= 3.11 found (set PYTHON=/path/to/python3.12)" >&2
    return 1
}

if [ ! -x .venv/bin/python ]; then
    py=$(find_python)
    echo "creating .venv with $("$py" --version)"
    "$py" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# numba caches the kernels it compiles (TreeSHAP, the stability audit's Kendall tau) next to their modules: compiled once here
.venv/bin/python -c "from territoria.models import kendall, treeshap; treeshap.compile_kernels(); kendall.compile_kernels()"
# an empty MLflow store in the user's cache, which every new output folder's store copies
.venv/bin/python -c "from territoria.models.tracking import empty_store_template; empty_store_template()"
echo "installed: $(.venv/bin/territoria --help >/dev/null && echo territoria) in .venv"
