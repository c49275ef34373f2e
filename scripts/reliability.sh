#!/usr/bin/env bash
# The fault suite (kill -9 trials, under the real daemon too; outages, locks, a full disk, bad
# input, passwords), then its figures into the README's Reliability table and
# benchmarks/results/reliability.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
COUNTYSYNC_RELIABILITY_REPORT=1 .venv/bin/pytest -m "faults or daemon" "$@"
