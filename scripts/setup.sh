#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install countysync with its dev tools. Safe to re-run.
# Shows pip's progress (one line per package) and keeps the whole output in the log.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
log=.venv/pip-install.log
echo "Installing countysync and its dependencies into .venv (a few minutes the first time;" \
     "log: $log) ..."
if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
       .venv/bin/python -m pip install --disable-pip-version-check -e '.[dev]'; } 2>&1 |
     tee "$log" | { grep --line-buffered -E "^(Collecting|Successfully installed)" |
                    cut -c1-100 | sed -u 's/^/  /' || true; }
then
  tail -n 30 "$log"; echo "pip install failed; the whole log is in $log" >&2; exit 1
fi
