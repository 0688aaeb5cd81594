#!/usr/bin/env bash
# Create .venv at the repository root if it is missing, install requirements.txt (plus any
# extra packages given as arguments) into it, and the project itself in editable mode, so that
# every script imports `softlabel` without touching sys.path. Skips
# pip when nothing changed since the last successful install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv"
    "${PYTHON:-python3}" -m venv "$venv"
fi
stamp="$venv/.installed"
want="$(cat "$root/requirements.txt" "$root/pyproject.toml"; echo "root: $root"; echo "extra: $*")"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "installing requirements into $venv (first time: a few minutes)"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -r "$root/requirements.txt" "$@"
"${pip[@]}" --no-deps -e "$root"
printf '%s' "$want" > "$stamp"
