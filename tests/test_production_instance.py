"""The production instance (deploy/dagster.production.yaml) on the real PostgreSQL server: runs,
events and schedules stored there, runs queued and started by a real ``dagster-daemon``, and
two syncs submitted together run one after the other (the tag concurrency limit), never
writing the outputs at the same time; with events stored in batches, as deployed, every
window of a range run still gets its own materializations."""

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    AS_OF,
    FIRST_KEY,
    LAST_KEY,
    assert_each_window_materialized,
    assert_failed_range_run_shows_each_window_failed,
    clean_env,
    stop_process_group,
    storage_sets_batch_size,
)
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from countysync_assets.demo_source import create_demo_source
from countysync_assets.instance_storage import (
    EVENT_BATCH_SIZE_ENV,
    BatchedPostgresEventLogStorage,
)
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors.in_process import InProcessSync

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAYS = ("2026-05-28", "2026-05-29")
SETTINGS = ROOT / "deploy" / "dagster.production.yaml"
BATCH_SIZE = yaml.safe_load(SETTINGS.read_text())["storage"]["custom"]["config"][
    "event_batch_size"]


def production_home(tmp_path: Path, pg_database_url: str, monkeypatch) -> tuple[Path, str]:
    """DAGSTER_HOME with the production dagster.yaml, its storage a fresh PostgreSQL database
    (its schema made, before two processes race to), and that database's URL."""
    home = tmp_path / "home"
    home.mkdir()
    # as deployed, but the log file in this test's folder (production: /var/log/countysync/)
    (home / "dagster.yaml").write_text(SETTINGS.read_text()
                                       .replace("/var/log/countysync/", f"{tmp_path}/"))
    # dagster-postgres is written for psycopg2 (SQLAlchemy 2.1 would pick psycopg 3)
    instance_url = pg_database_url.replace("postgresql+psycopg://", "postgresql+psycopg2://")
    monkeypatch.setenv("COUNTYSYNC_DAGSTER_PG_URL", instance_url)
    DagsterInstance.from_config(str(home)).dispose()
    return home, instance_url


@pytest.fixture
def production(tmp_path, pg_database_url, monkeypatch):
    """The production instance, a demo source; and a real daemon, stopped afterwards."""
    home, instance_url = production_home(tmp_path, pg_database_url, monkeypatch)
    source = tmp_path / "demo.sqlite"
    create_demo_source(f"sqlite:///{source}", rows=400, seed=3, as_of=AS_OF, days=4)
    env = clean_env(DAGSTER_HOME=str(home), COUNTYSYNC_DAGSTER_PG_URL=instance_url,
                    COUNTYSYNC_DEMO_SOURCE_PATH=str(source),
                    COUNTYSYNC_EXPORT_DIR=str(tmp_path / "exports"),
                    COUNTYSYNC_PARTITION_START="2026-05-28")
    with open(tmp_path / "daemon.log", "w") as log:
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w",
                                   str(ROOT / "workspace.yaml")], cwd=tmp_path, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield home, env, tmp_path
    finally:
        stop_process_group(daemon)


def _why(entry) -> str:
    """A failed run's log entry as the reader of a failing test needs it: a step's failure
    with its error and traceback, anything else by its message."""
    if entry.is_dagster_event and entry.dagster_event.is_step_failure:
        return entry.dagster_event.step_failure_data.error.to_string()
    return entry.message


def test_two_syncs_are_queued_and_run_one_at_a_time_on_postgres(production):
    home, env, workdir = production
    for day in DAYS:
        launched = subprocess.run(
            [str(BIN / "dagster"), "job", "launch", "-w", str(ROOT / "workspace.yaml"),
             "-j", "sync_parcels", "--tags", f'{{"dagster/partition": "{day}"}}'],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=180)
        assert launched.returncode == 0, launched.stderr[-2000:]
    instance = DagsterInstance.from_config(str(home))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # ours, and the change sensor's own catch-up runs
        runs = instance.get_runs(RunsFilter(job_name="sync_parcels"))
        ours = [r for r in runs if "dagster/sensor_name" not in r.tags]
        if len(ours) == 2 and all(r.is_finished for r in runs):
            break
        time.sleep(2)
    else:
        raise AssertionError("the daemon did not run the syncs in 5 minutes: "
                             + (workdir / "daemon.log").read_text()[-3000:])
    failed = [_why(e) for r in runs if r.status != DagsterRunStatus.SUCCESS
              for e in instance.all_logs(r.run_id) if (e.is_dagster_event and e.dagster_event
              .is_step_failure) or (e.level >= 40 and e.message)]
    assert {r.status for r in runs} == {DagsterRunStatus.SUCCESS}, failed[:5]
    assert all(r.tags["countysync/writes"] == "exports" for r in runs)
    records = sorted(instance.get_run_records(RunsFilter(job_name="sync_parcels")),
                     key=lambda record: record.start_time)
    for before, after in itertools.pairwise(records):
        assert before.end_time <= after.start_time, "two syncs ran at the same time"
    assert (workdir / "exports" / "working_db.sqlite").exists()
    assert "parcel_sync" in (workdir / "countysync.log").read_text()  # the runs' file log
    instance.dispose()


def test_batched_events_give_each_window_of_a_range_run_its_materializations(
        tmp_path, pg_database_url, demo_url, monkeypatch):
    """As deployed, the storage stores a new run's planned events and a range run's
    materializations of each asset in one PostgreSQL transaction (event_batch_size): every
    window of the run still gets its own event for every asset of the sync, with the run's
    figures named as the run's."""
    storage_sets_batch_size(monkeypatch)
    home, _ = production_home(tmp_path, pg_database_url, monkeypatch)
    instance = DagsterInstance.from_config(str(home))
    assert isinstance(instance.event_log_storage, BatchedPostgresEventLogStorage)
    assert os.environ[EVENT_BATCH_SIZE_ENV] == str(BATCH_SIZE)  # set by the storage
    sync = InProcessSync(MasterParcelsSource(url=demo_url), tmp_path / "exports", instance)
    assert sync.sync_range(FIRST_KEY, LAST_KEY)
    assert_each_window_materialized(instance, rows=2_000)  # the demo's, all in these windows
    instance.dispose()


def test_a_failed_range_run_shows_each_of_its_windows_failed_on_postgres(
        tmp_path, pg_database_url, demo_url, monkeypatch):
    storage_sets_batch_size(monkeypatch)
    home, _ = production_home(tmp_path, pg_database_url, monkeypatch)
    instance = DagsterInstance.from_config(str(home))
    assert_failed_range_run_shows_each_window_failed(instance, demo_url, tmp_path / "exports")
    instance.dispose()
