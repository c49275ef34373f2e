#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install countysync with its dev tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
log=.venv/pip-install.log
if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
       .venv/bin/python -m pip install --disable-pip-version-check -e '.[dev]'; } > "$log" 2>&1
then
  tail -n 30 "$log"; echo "pip install failed; the whole log is in $log" >&2; exit 1
fi
