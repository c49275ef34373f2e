"""The fault suite, part two: the export folder misbehaves. A desktop GIS holds a write lock on
an output, a reader keeps a transaction open on the GeoPackage, the folder is read-only, the
disk is full. Each costs a bounded, logged wait and then one clear line naming the file and
what to do; the previous outputs stay exactly as they were, and the next run is whole."""

import multiprocessing
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from conftest import AS_OF, FIRST_KEY, materialize_range, skip_or_fail_in_ci
from dagster import materialize
from output_checks import assert_outputs_match_source, partition_keys, snapshot

from countysync_assets.definitions import all_assets
from countysync_assets.demo_source import churn
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.io_managers.output_transactions import OutputTransactions
from countysync_assets.partitions import range_tags
from countysync_assets.resources.master_parcels_source import MasterParcelsSource

pytestmark = pytest.mark.faults
KEYS = partition_keys(FIRST_KEY, "2026-06-01")
DATABASES = ["working_db.sqlite", "stats_db.sqlite", "rejects_db.sqlite",
             "geo_db.gpkg"]


def sync(url: str, exports, instance, lock_wait: float = 120, two_cores: bool = False):
    """Every asset over the demo windows and the day after, as one run (``two_cores``: the
    geo formats written by a second process, as a big run's are)."""
    return materialize(
        all_assets, instance=instance, tags=range_tags(FIRST_KEY, "2026-06-01"),
        resources={"source": MasterParcelsSource(url=url),
                   "io_manager": ExportIOManager(export_dir=str(exports),
                                                 lock_wait_seconds=lock_wait,
                                                 parallel_rows=1 if two_cores else 0)},
        raise_on_error=False)


def failure(result) -> str:
    return result.get_step_failure_events()[0].event_specific_data.error.message


@pytest.fixture
def county(demo_url, tmp_path, instance):
    """A synced county with a day of edits waiting: (url, exports, snapshot before)."""
    exports = tmp_path / "exports"
    assert materialize_range(MasterParcelsSource(url=demo_url), exports, instance).success
    churn(demo_url, updates=40, inserts=5, deletes=3, seed=2, now=AS_OF + timedelta(hours=3))
    return demo_url, exports, snapshot(exports)


def hold(paths: list[str], statements: tuple[str, ...], ready, release) -> None:
    """Another program's connections to ``paths``, each having run ``statements``, held
    until ``release`` (closing rolls back a transaction they began)."""
    conns = [sqlite3.connect(path, isolation_level=None) for path in paths]
    for conn in conns:
        for statement in statements:
            conn.execute(statement).fetchall()
    ready.set()
    release.wait(120)
    for conn in conns:
        conn.close()


@contextmanager
def another_program(paths: list, *statements: str) -> Iterator[multiprocessing.Process]:
    """Another program (a desktop GIS, a reader) with the files ``paths`` open, having run
    ``statements`` on each, for as long as the block runs."""
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    process = context.Process(target=hold, args=([str(p) for p in paths], statements, ready,
                                                 release))
    process.start()
    try:
        assert ready.wait(60)
        yield process
    finally:
        release.set()
        process.join(60)


@pytest.mark.parametrize(("database", "two_cores"),
                         [*((database, False) for database in DATABASES), ("geo_db.gpkg", True)])
def test_a_locked_output_fails_clearly_and_changes_nothing(database, two_cores, county,
                                                           instance, reliability):
    url, exports, before = county
    # a desktop GIS in an edit session holds the file's write lock
    with another_program([exports / database], "BEGIN IMMEDIATE") as holder:
        result = sync(url, exports, instance, lock_wait=2, two_cores=two_cores)
    assert not result.success
    message = failure(result)
    assert f"{database} is locked by " in message and message.strip().count("\n") == 0
    assert f"(pid {holder.pid})" in message and "run the sync again" in message
    assert snapshot(exports) == before, "a lock must change no output"
    assert sync(url, exports, instance).success
    assert_outputs_match_source(url, exports, KEYS, file_keys=[])
    assert not staged_files(exports), "the second process left its staging files"
    where = " (written by the run's second process)" if two_cores else ""
    reliability(suite="export folder", case=f"write lock on {database}{where}", trials=1,
                outcome="clear error, outputs unchanged, next run whole")


def staged_files(exports) -> list:
    return [path for path in exports.rglob(".*") if path.is_file()]


def test_the_second_process_dying_fails_the_run_and_changes_nothing(county, instance,
                                                                    reliability):
    """The process that writes the geo formats is killed (the kernel's OOM killer would) as
    it starts: the run fails with one line that says so, and no output changes."""
    url, exports, before = county
    outcome = {}
    run = threading.Thread(target=lambda: outcome.update(
        result=sync(url, exports, instance, two_cores=True)))
    run.start()
    deadline = time.monotonic() + 120
    while not (writers := [child for child in psutil.Process().children()
                           if "spawn_main" in " ".join(child.cmdline())]):
        assert run.is_alive() and time.monotonic() < deadline, "no second process started"
        time.sleep(0.01)
    writers[0].kill()
    run.join(300)
    result = outcome["result"]
    assert not result.success
    message = failure(result)
    assert f"(pid {writers[0].pid}) ended unexpectedly" in message
    assert message.strip().count("\n") == 0
    assert snapshot(exports) == before
    assert sync(url, exports, instance, two_cores=True).success
    assert_outputs_match_source(url, exports, KEYS, file_keys=[])
    assert not staged_files(exports)
    reliability(suite="export folder", case="the run's second process (geo writer) killed",
                trials=1, outcome="clear error, outputs unchanged, next run whole")


def test_a_lock_released_during_the_wait_costs_only_the_wait_and_a_log_line(county,
                                                                           instance):
    url, exports, _ = county
    conn = sqlite3.connect(exports / "stats_db.sqlite", isolation_level=None,
                           check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    threading.Timer(3, lambda: conn.execute("ROLLBACK")).start()
    result = sync(url, exports, instance, lock_wait=60)
    conn.close()
    assert result.success
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert [m for m in logs if m.startswith("Waiting for stats_db.sqlite, locked by")]
    assert_outputs_match_source(url, exports, KEYS, file_keys=[])


def test_a_reader_holding_the_geopackage_open_does_not_hold_up_the_sync(county, instance):
    """A reader mid-transaction on geo_db.gpkg used to hang a sync for 15 minutes."""
    url, exports, _ = county
    with another_program([exports / "geo_db.gpkg"], "BEGIN", "SELECT count(*) FROM parcels"):
        started = time.monotonic()
        result = sync(url, exports, instance, lock_wait=30)
    assert result.success, failure(result)
    assert time.monotonic() - started < 30
    assert_outputs_match_source(url, exports, KEYS, file_keys=[])


def test_each_database_file_holds_what_the_sync_published_while_a_gis_has_it_open(
        county, instance, tmp_path):
    """A backup that copies only the .sqlite and .gpkg files (not their -wal logs) has every
    row a sync published: the sync copies each file's log into it after publishing, which
    SQLite would leave to the last connection's close, never while a GIS has the file open."""
    url, exports, _ = county
    # a desktop GIS showing the layers: open between reads, which keeps SQLite from copying
    # the log in as the last connection closes
    with another_program([exports / name for name in DATABASES],
                         "SELECT count(*) FROM sqlite_master"):
        result = sync(url, exports, instance)
        copied = tmp_path / "backup"
        copied.mkdir()
        for name in DATABASES:  # the database files alone, while the GIS still has them open
            (copied / name).write_bytes((exports / name).read_bytes())
    assert result.success, failure(result)
    assert_outputs_match_source(url, exports, KEYS, file_keys=[])
    live = snapshot(exports)
    assert snapshot(copied) == {key: rows for key, rows in live.items()
                                if key.split(":")[0] in DATABASES or key.startswith("gpkg")}


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode:
        skip_or_fail_in_ci(f"cannot mount here ({done.stderr.strip()})")


@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A disk of ``size`` (tmpfs) mounted at the new folder ``folder`` while the block runs."""
    folder.mkdir()
    mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def grow(disk: Path, size: str) -> None:
    """Give a ``small_disk`` more room (space freed)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def test_a_read_only_export_folder_fails_clearly(county, instance, tmp_path, reliability):
    url, exports, before = county
    mount("--bind", str(exports), str(exports))
    try:
        mount("-o", "remount,bind,ro", str(exports))
        result = sync(url, exports, instance)
    finally:
        subprocess.run(["umount", str(exports)], check=True)
    assert not result.success
    message = failure(result)
    assert "is not writable for the user running Dagster" in message, message
    assert snapshot(exports) == before
    assert sync(url, exports, instance).success
    assert_outputs_match_source(url, exports, KEYS, file_keys=[])
    reliability(suite="export folder", case="read-only folder", trials=1,
                outcome="clear error, outputs unchanged, next run whole")


def test_a_full_disk_fails_clearly_and_keeps_the_previous_outputs(demo_url, tmp_path,
                                                                   instance, reliability):
    with small_disk(tmp_path / "small", "40m") as exports:
        assert materialize_range(MasterParcelsSource(url=demo_url), exports, instance).success
        before = snapshot(exports)
        churn(demo_url, inserts=12_000, seed=3, now=AS_OF + timedelta(hours=3))
        result = sync(demo_url, exports, instance)
        assert not result.success
        message = failure(result)
        assert "the disk holding" in message and "is full" in message, message
        grow(exports, "200m")  # a WAL database cannot even be read while its disk is full
        assert snapshot(exports) == before, "a full disk must leave the outputs as they were"
        assert sync(demo_url, exports, instance).success
        assert_outputs_match_source(demo_url, exports, KEYS, file_keys=[])
    reliability(suite="export folder", case="full disk (tmpfs)", trials=1,
                outcome="clear error, outputs unchanged, next run whole")


def test_a_checkpoint_the_full_disk_stops_warns_and_the_rows_stay_published(tmp_path, caplog):
    """Space for a commit's log but not for copying it into the database (a disk filling up
    in between): the write is published (readers see it in the log), a warning names the
    file, and once there is room the next publish copies the log in."""
    with small_disk(tmp_path / "small", "3m") as folder:
        path = folder / "working_db.sqlite"

        def publish(rows: list[tuple[int, bytes]]) -> None:
            files = OutputTransactions()
            conn, staged = files.begin(path, "things")
            conn.execute("CREATE TABLE IF NOT EXISTS things (id INTEGER PRIMARY KEY, b BLOB)")
            conn.executemany("INSERT OR REPLACE INTO things VALUES (?, ?)", rows)
            files.publish([staged])

        publish([(1, b"a")])
        with caplog.at_level("WARNING"):  # ~1.6 MB: its log fits, a copy of it does not
            publish([(2, bytes(1_600_000))])
        assert "working_db.sqlite: its write-ahead log could not be copied into it yet" \
            in caplog.text, caplog.text
        with closing(sqlite3.connect(path)) as reader:
            assert [r[0] for r in reader.execute("SELECT id FROM things")] == [1, 2]
        grow(folder, "20m")
        publish([(3, b"c")])
        backup = shutil.copy(path, tmp_path / "backup.sqlite")  # the file alone, no log
        with closing(sqlite3.connect(backup)) as reader:
            assert [r[0] for r in reader.execute("SELECT id FROM things")] == [1, 2, 3]


def test_a_commit_failing_part_way_keeps_what_it_published_and_holds_no_lock(tmp_path):
    """Three files published in turn, the second's commit refused (a deferred constraint, as a
    damaged file might refuse it): the first stays published and copied in from its log, the
    second and third keep their rows as they were, and no file is left locked or open."""
    paths = [tmp_path / f"{name}.sqlite" for name in ("first", "second", "third")]
    for path in paths:
        with closing(sqlite3.connect(path)) as conn:
            conn.executescript("CREATE TABLE parent (id INTEGER PRIMARY KEY);"
                               "CREATE TABLE things (id INTEGER PRIMARY KEY, parent INTEGER "
                               "REFERENCES parent DEFERRABLE INITIALLY DEFERRED);"
                               "INSERT INTO parent VALUES (1); INSERT INTO things VALUES (1, 1)")
    files = OutputTransactions()
    staged = []
    for path in paths:
        conn, write = files.begin(path, path.name,
                                  prepare=lambda c: c.execute("PRAGMA foreign_keys=ON"))
        parent = 99 if path.name == "second.sqlite" else 1  # no parent 99: COMMIT fails
        conn.execute("INSERT INTO things VALUES (2, ?)", (parent,))
        staged.append(write)
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        files.publish(staged)
    files.rollback()
    backup = shutil.copy(paths[0], tmp_path / "backup.sqlite")  # the file alone, no log
    held = {}
    for path in [*paths, Path(backup)]:
        with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")  # no lock left behind
            held[path.name] = [row[0] for row in conn.execute("SELECT id FROM things")]
            conn.execute("ROLLBACK")
    assert held == {"first.sqlite": [1, 2], "second.sqlite": [1], "third.sqlite": [1],
                    "backup.sqlite": [1, 2]}
    assert not [f for f in psutil.Process().open_files() if f.path.startswith(str(tmp_path))]
