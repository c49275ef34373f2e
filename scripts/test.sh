#!/usr/bin/env bash
# The whole test suite: install what it needs, lint, then pytest (arguments go to pytest).
# Tests that need PostgreSQL or the FreeTDS driver skip where those are missing, except in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-packages.sh
bash scripts/setup.sh
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
fi
.venv/bin/ruff check .
# Three workers on two cores: many tests wait on subprocesses (dagster dev, daemons, killed
# runs). Tests of one xdist_group share a worker, so one `dagster dev` serves its module.
.venv/bin/pytest -n "${COUNTYSYNC_TEST_WORKERS:-3}" --dist loadgroup "$@"
