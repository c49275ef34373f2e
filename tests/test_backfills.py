"""Backfills from the command line, as the README shows them: a past range in one run, and
the same range again, which must leave every output as it was."""

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from conftest import AS_OF, RUN_DIR, clean_env
from output_checks import assert_outputs_match_source, partition_keys, snapshot

from countysync_assets.demo_source import create_demo_source

ROOT = Path(__file__).resolve().parents[1]


def test_cli_backfill_of_a_past_range_then_a_rerun_changes_nothing(tmp_path):
    source = tmp_path / "demo.sqlite"
    create_demo_source(f"sqlite:///{source}", rows=800, seed=12, as_of=AS_OF, days=10)
    env = clean_env()
    env.update(DAGSTER_HOME=str(tmp_path), COUNTYSYNC_DEMO_SOURCE_PATH=str(source),
               COUNTYSYNC_EXPORT_DIR=str(tmp_path / "exports"))
    command = [str(Path(sys.executable).with_name("dagster")), "asset", "materialize",
               "-m", "countysync_assets.definitions", "--select", "group:parcels",
               "--partition-range", "2026-05-24...2026-05-27"]

    def backfill() -> None:
        done = subprocess.run(command, cwd=RUN_DIR, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    backfill()
    keys = partition_keys("2026-05-24", "2026-05-27")
    exports = tmp_path / "exports"
    assert sorted(p.stem for p in (exports / "working").glob("*.csv")) == keys
    before = snapshot(exports)
    backfill()
    assert snapshot(exports) == before
    # the range holds exactly the source rows of those windows, and nothing else
    engine = sa.create_engine(f"sqlite:///{source}")
    with engine.begin() as conn:
        conn.execute(sa.text('DELETE FROM "MasterParcels" WHERE updated_at < :s OR '
                             "updated_at >= :e"), {"s": "2026-05-24", "e": "2026-05-28"})
    engine.dispose()
    assert_outputs_match_source(f"sqlite:///{source}", exports, keys)
