#!/usr/bin/env bash
# Run the test suite in the project's .venv (created and filled on first use).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k replay`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh" pytest
cd "$root"
exec .venv/bin/python -m pytest "$@"
