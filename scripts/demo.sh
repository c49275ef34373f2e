#!/usr/bin/env bash
# Fresh machine to real outputs: set up .venv, create the embedded demo source (ROWS parcels,
# default 50,000), materialize every asset for every partition that holds data in ONE run,
# then list where each output is. Dagster's instance lives in .dagster_home (kept between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
# create the instance's storage once, before any run: two runs starting at once on a new
# DAGSTER_HOME would both try to create it
.venv/bin/dagster instance migrate > "$DAGSTER_HOME/instance-migrate.log" 2>&1 || {
  cat "$DAGSTER_HOME/instance-migrate.log"; exit 1; }
.venv/bin/countysync demo-source --rows "${ROWS:-50000}" --env-file .env
range=$(.venv/bin/countysync partition-range)
log="$DAGSTER_HOME/last-demo-run.log"
echo "Materializing every asset for partitions $range in one run (log: $log) ..."
# the run's own progress lines (rows read, outputs written), the rest only in the log
set +e
.venv/bin/dg launch -m countysync_assets.definitions --assets 'group:parcels' \
  --partition-range "$range" 2>&1 | tee "$log" |
  { grep --line-buffered -E " - INFO - " | grep --line-buffered -v "dagster.code_server" |
    sed -u -E 's/^.* - INFO - [^ ]+ - [^ ]+ - /  /' || true; }
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || { tail -n 40 "$log"; echo "The sync failed; its log: $log" >&2; exit 1; }
.venv/bin/countysync outputs
# the second pipeline: appraisal-district bulk files (demo HCAD-format ZIPs, read via file://)
year=$(date -u +%Y)
.venv/bin/countysync appraisal-demo --accounts "${ACCOUNTS:-5000}" --year "$year" \
  --out data/appraisal_demo --env-file .env
.venv/bin/countysync appraisal-import --config data/appraisal_demo/hcad_demo.yaml --year "$year" \
  2> "$DAGSTER_HOME/last-appraisal-run.log" || { tail -n 40 "$DAGSTER_HOME/last-appraisal-run.log"; exit 1; }
