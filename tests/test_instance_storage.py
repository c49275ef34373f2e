"""The local instance's storage (dagster.yaml, countysync_assets/instance_storage.py): a range
run on it stores every window's materializations (in batches, as it sets Dagster to), and
one that fails shows each of its windows failed; a new run's file, copied from an empty one,
is the file Dagster would make; what
one process writes another reads at once, kept connections or not; more runs than it keeps
files open for, a wiped instance and a forked child still work; ``dagster instance migrate``
(scripts/demo.sh's first step) prepares it; and an instance made with Dagster's default
storage keeps its history when switched to it."""

import multiprocessing
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from conftest import (
    FIRST_KEY,
    LAST_KEY,
    ROOT,
    SHIPPED_STORAGE,
    assert_each_window_materialized,
    assert_failed_range_run_shows_each_window_failed,
    clean_env,
    storage_sets_batch_size,
)
from dagster import (
    AssetKey,
    DagsterInstance,
    asset,
    materialize,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from countysync_assets.instance_storage import (
    EVENT_BATCH_SIZE_ENV,
    KEPT_RUN_FILES,
    KeptEnginesEventLogStorage,
)
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors.in_process import InProcessSync


@asset
def marker() -> int:
    """A trivial asset: one materialization event per run."""
    return 1


def write_shipped_settings(home: Path, log_dir: Path) -> None:
    """The dagster.yaml countysync ships, in ``home``, its log file in ``log_dir``."""
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text().replace(
        "filename: countysync.log", f"filename: {log_dir}/countysync.log"))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """The shipped instance's home as DAGSTER_HOME."""
    storage_sets_batch_size(monkeypatch)
    home = tmp_path / "home"
    home.mkdir()
    write_shipped_settings(home, tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_range_run_on_the_shipped_instance_stores_each_window(home, demo_url, tmp_path):
    instance = DagsterInstance.get()
    assert isinstance(instance.event_log_storage, KeptEnginesEventLogStorage)
    batch_size = SHIPPED_STORAGE["custom"]["config"]["event_batch_size"]
    assert os.environ[EVENT_BATCH_SIZE_ENV] == str(batch_size)  # set by the storage
    sync = InProcessSync(MasterParcelsSource(url=demo_url), tmp_path / "exports", instance)
    assert sync.sync_range(FIRST_KEY, LAST_KEY)
    assert_each_window_materialized(instance, rows=2_000)
    # the files are Dagster's default ones, where its default storage would look
    assert (home / "history" / "runs" / "index.db").exists()
    assert (home / "history" / "runs.db").exists()
    instance.dispose()


def test_a_failed_range_run_shows_each_of_its_windows_failed(home, demo_url, tmp_path):
    instance = DagsterInstance.get()
    assert_failed_range_run_shows_each_window_failed(instance, demo_url, tmp_path / "exports")
    instance.dispose()


def _schema(path: Path) -> tuple:
    """What Dagster's set-up leaves in an event file: tables and indexes, the alembic stamp,
    the journal mode."""
    with closing(sqlite3.connect(path)) as conn:
        return (sorted(conn.execute("SELECT type, name, sql FROM sqlite_master")),
                conn.execute("SELECT version_num FROM alembic_version").fetchall(),
                conn.execute("PRAGMA journal_mode").fetchone())


def test_a_new_runs_file_is_a_copy_of_the_one_dagster_makes(home, tmp_path):
    instance = DagsterInstance.get()
    first = materialize([marker], instance=instance)
    assert first.success
    runs_dir = home / "history" / "runs"
    [empty] = runs_dir.glob(".empty-run-*.sqlite")  # made once, by Dagster's own set-up
    made_at = empty.stat().st_mtime_ns
    second = materialize([marker], instance=DagsterInstance.get())  # another storage object
    assert second.success
    assert empty.stat().st_mtime_ns == made_at  # copied, not made again
    plain = SqliteEventLogStorage(str(tmp_path / "plain"))  # Dagster's own storage
    with plain.run_connection("dagsters-own"):
        pass
    expected = _schema(tmp_path / "plain" / "dagsters-own.db")
    for run in (first, second):
        assert _schema(runs_dir / f"{run.run_id}.db") == expected
        assert [e for e in instance.all_logs(run.run_id)
                if e.dagster_event and e.dagster_event.is_step_success]
    assert sorted(p.stem for p in runs_dir.glob("*.db")) == sorted(
        ["index", *(run.run_id for run in instance.get_runs())])  # no copy left behind
    instance.dispose()


def test_an_empty_index_file_is_set_up_not_taken_as_ready(home):
    """A file without Dagster's stamp (left empty by a process that died making it) gets
    Dagster's set-up; only a stamped one skips it."""
    runs_dir = home / "history" / "runs"
    runs_dir.mkdir(parents=True)
    (runs_dir / "index.db").touch()
    instance = DagsterInstance.get()
    assert materialize([marker], instance=instance).success
    assert len(instance.fetch_materializations(AssetKey("marker"), limit=10).records) == 1
    instance.dispose()


def test_what_one_process_writes_another_reads_at_once(home, demo_url, tmp_path):
    """The UI's process keeps its connections open while a run's process writes: it must see
    the run's events at once, not an old snapshot."""
    watcher = DagsterInstance.get()
    assert not watcher.get_materialized_partitions(AssetKey("working"))  # connections open
    script = ("import sys; from pathlib import Path; from dagster import DagsterInstance\n"
              "from countysync_assets.resources.master_parcels_source import MasterParcelsSource\n"
              "from countysync_assets.sensors.in_process import InProcessSync\n"
              "sync = InProcessSync(MasterParcelsSource(url=sys.argv[1]), Path(sys.argv[2]),"
              " DagsterInstance.get())\n"
              "sys.exit(0 if sync.sync_range(sys.argv[3], sys.argv[3]) else 1)\n")
    for day in (FIRST_KEY, LAST_KEY):
        ran = subprocess.run([sys.executable, "-c", script, demo_url, str(tmp_path / "exports"),
                              day], env=clean_env(DAGSTER_HOME=str(home)),
                             capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert day in watcher.get_materialized_partitions(AssetKey("working"))
    runs = watcher.get_runs()
    assert len(runs) == 2
    assert all(watcher.all_logs(run.run_id) for run in runs)  # each run's own file, read here
    watcher.dispose()


def test_more_runs_than_files_kept_open_then_a_wipe(home):
    instance = DagsterInstance.get()
    storage = instance.event_log_storage
    for _ in range(KEPT_RUN_FILES + 3):
        assert materialize([marker], instance=instance).success
    assert len(storage._engines) <= KEPT_RUN_FILES + 1  # the newest runs' files and the index
    runs = instance.get_runs()
    assert len(runs) == KEPT_RUN_FILES + 3
    for run in runs:  # the oldest runs' files were closed: opened again to read
        assert any(e.dagster_event and e.dagster_event.is_step_success
                   for e in instance.all_logs(run.run_id))
    assert len(instance.fetch_materializations(AssetKey("marker"), limit=100).records) == \
        KEPT_RUN_FILES + 3
    instance.wipe()
    assert set(storage._engines) <= {"index"}  # no deleted run file held open
    assert not list((home / "history" / "runs").glob("*-*.db"))  # each run's file is gone
    assert materialize([marker], instance=instance).success
    assert len(instance.fetch_materializations(AssetKey("marker"), limit=100).records) == 1
    instance.dispose()


def _materialize_in_child(instance: DagsterInstance, kept: multiprocessing.Queue) -> None:
    """In a forked child, with the parent's instance object as it was at the fork."""
    kept.put(len(instance.event_log_storage._engines))  # none of the parent's connections
    kept.put(materialize([marker], instance=instance).success)


def test_a_forked_child_opens_its_own_connections(home):
    instance = DagsterInstance.get()
    assert materialize([marker], instance=instance).success
    assert instance.event_log_storage._engines  # the parent holds open connections
    context = multiprocessing.get_context("fork")  # the child gets this very object
    kept = context.Queue()
    child = context.Process(target=_materialize_in_child, args=(instance, kept))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 0
    assert kept.get(timeout=10) == 0
    assert kept.get(timeout=10) is True
    assert len(instance.fetch_materializations(AssetKey("marker"), limit=10).records) == 2
    instance.dispose()


def test_dagster_instance_migrate_prepares_the_shipped_instance(home):
    """demo.sh creates the instance's storage with Dagster's CLI before any run."""
    migrated = subprocess.run([str(Path(sys.executable).parent / "dagster"), "instance",
                               "migrate"], env=clean_env(DAGSTER_HOME=str(home)),
                              capture_output=True, text=True, timeout=300)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    instance = DagsterInstance.get()
    assert isinstance(instance.event_log_storage, KeptEnginesEventLogStorage)
    assert materialize([marker], instance=instance).success
    instance.dispose()


def test_an_instance_made_with_dagsters_default_storage_keeps_its_history(tmp_path,
                                                                         monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    before = DagsterInstance.from_config(str(home))  # no dagster.yaml: Dagster's default
    assert type(before.event_log_storage).__name__ == "SqliteEventLogStorage"
    assert materialize([marker], instance=before).success
    before.dispose()
    write_shipped_settings(home, tmp_path)
    storage_sets_batch_size(monkeypatch)
    after = DagsterInstance.from_config(str(home))
    assert isinstance(after.event_log_storage, KeptEnginesEventLogStorage)
    assert len(after.get_runs()) == 1
    assert after.get_latest_materialization_event(AssetKey("marker")) is not None
    assert materialize([marker], instance=after).success
    assert len(after.fetch_materializations(AssetKey("marker"), limit=10).records) == 2
    after.dispose()
