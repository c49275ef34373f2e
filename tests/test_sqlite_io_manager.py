"""SQLite IO manager on real SQLite files: the merged current state of an asset."""

import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from dagster import TimeWindow, build_input_context
from io_contexts import COLUMNS, input_context, logged, output_context

from countysync_assets.assets.asset_metadata import storage_metadata
from countysync_assets.io_managers import sqlite_io_manager
from countysync_assets.io_managers.format_io_manager import removals
from countysync_assets.io_managers.output_transactions import OutputTransactions
from countysync_assets.io_managers.sqlite_io_manager import SQLiteIOManager


def things(rows: list[tuple[int, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["id", "name", "updated_at"])
    frame["updated_at"] = pd.to_datetime(frame["updated_at"], utc=True, format="ISO8601").astype(
        "datetime64[us, UTC]")
    return frame


def stored(manager: SQLiteIOManager) -> list[tuple]:
    path = manager.db_path(output_context())
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT id, name, updated_at FROM things ORDER BY id").fetchall()


@pytest.fixture
def manager(tmp_path) -> SQLiteIOManager:
    return SQLiteIOManager(export_dir=str(tmp_path))


def test_write_creates_keyed_table_in_wal_mode(manager):
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00:00.000001"),
                                                    (2, "b", "2026-05-28 02:00:00")]))
    assert stored(manager) == [(1, "a", "2026-05-28T01:00:00.000001+00:00"),
                               (2, "b", "2026-05-28T02:00:00.000000+00:00")]
    with closing(sqlite3.connect(manager.db_path(output_context()))) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(things)")}
        schema = {r[1]: (r[2], r[5]) for r in conn.execute("PRAGMA table_info(things)")}
    assert "ix_things_updated_at" in indexes
    assert schema["id"] == ("INTEGER", 1)  # declared type from the column schema; the key


def test_upsert_replaces_with_newer_and_keeps_other_rows(manager):
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00"),
                                                    (2, "b", "2026-05-28 02:00")]))
    context = output_context(first="2026-05-29")
    manager.handle_output(context, things([(2, "b2", "2026-05-29 09:00"),
                                           (3, "c", "2026-05-29 10:00")]))
    assert [r[:2] for r in stored(manager)] == [(1, "a"), (2, "b2"), (3, "c")]
    metadata = logged(context)
    assert metadata["sqlite_rows_inserted"] == 1
    assert metadata["sqlite_rows_updated"] == 1


def test_rerun_writes_nothing(manager):
    frame = things([(1, "a", "2026-05-28 01:00"), (2, "b", "2026-05-28 02:00")])
    manager.handle_output(output_context(), frame)
    context = output_context()
    manager.handle_output(context, frame)
    metadata = logged(context)
    assert (metadata["sqlite_rows_inserted"], metadata["sqlite_rows_updated"],
            metadata["sqlite_rows_unchanged"]) == (0, 0, 2)


def test_older_version_never_replaces_newer(manager):
    manager.handle_output(output_context(first="2026-05-29"),
                          things([(1, "new", "2026-05-29 12:00:00.000002")]))
    manager.handle_output(output_context(),
                          things([(1, "old", "2026-05-28 12:00:00")]))
    manager.handle_output(output_context(first="2026-05-29"),
                          things([(1, "older-by-1us", "2026-05-29 12:00:00.000001")]))
    assert stored(manager) == [(1, "new", "2026-05-29T12:00:00.000002+00:00")]


def test_same_timestamp_with_other_values_wins(manager):
    """Equal updated_at means the same source version: the latest extract is kept."""
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00")]))
    manager.handle_output(output_context(), things([(1, "a-corrected", "2026-05-28 01:00")]))
    assert stored(manager)[0][1] == "a-corrected"


def test_load_returns_current_rows_of_requested_partitions(manager):
    manager.handle_output(output_context(first="2026-05-28", last="2026-05-30"), things([
        (1, "a", "2026-05-28 01:00"), (2, "b", "2026-05-29 23:59:59.999999"),
        (3, "c", "2026-05-30 00:00")]))
    loaded = manager.load_input(input_context(first="2026-05-29"))
    assert loaded["id"].tolist() == [2]
    assert str(loaded["updated_at"].dtype) == "datetime64[us, UTC]"
    assert loaded["updated_at"].iloc[0] == pd.Timestamp("2026-05-29 23:59:59.999999", tz="UTC")
    both = manager.load_input(input_context(first="2026-05-29", last="2026-05-30"))
    assert both["id"].tolist() == [2, 3]


def test_failed_write_leaves_previous_state(manager):
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00")]))
    bad = things([(2, "b", "2026-05-28 02:00")]).assign(name=[object()])  # cannot be stored
    with pytest.raises(sqlite3.ProgrammingError):
        manager.handle_output(output_context(), bad)
    assert [r[:2] for r in stored(manager)] == [(1, "a")]


def test_load_before_any_write_says_what_to_do(manager):
    with pytest.raises(FileNotFoundError, match="materialize things"):
        manager.load_input(input_context())


def test_input_metadata_columns_reads_only_those_columns(manager):
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00")]))
    narrow = input_context(input_metadata={"columns": ["id", "name"]})
    assert list(manager.load_input(narrow).columns) == ["id", "name"]


def test_input_asking_for_a_column_the_source_lacks_names_it(manager):
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00")]))
    narrow = input_context(input_metadata={"columns": ["id", "owner"]})
    with pytest.raises(ValueError, match=r"no column\(s\) \['owner'\].*it has \['id', 'name', "
                                         r"'updated_at'\]. Rename them in the source"):
        manager.load_input(narrow)


def test_input_metadata_aggregate_is_totalled_by_sqlite(manager):
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00"),
                                                    (2, "a", "2026-05-28 02:00"),
                                                    (3, "b", "2026-05-28 03:00")]))
    totals = input_context(input_metadata={"aggregate": {
        "by": "name", "values": {"n": ["count", "*"], "ids": ["sum", "id"]}}})
    loaded = manager.load_input(totals).sort_values("name")
    assert loaded.to_dict("records") == [{"name": "a", "n": 2, "ids": 3},
                                         {"name": "b", "n": 1, "ids": 3}]


BY_NAME = {"by": "name", "values": {"n": ["count", "*"], "ids": ["sum", "id"],
                                    "named": ["count", "name"]}}


def county_totals(manager: SQLiteIOManager, aggregate: dict = BY_NAME) -> list[dict]:
    """The whole-table totals an unpartitioned asset (like use_code_summary) is given."""
    context = build_input_context(asset_key="things", upstream_output=output_context(),
                                  definition_metadata={"aggregate": aggregate})
    return manager.load_input(context).sort_values("name").to_dict("records")


def group_by(manager: SQLiteIOManager) -> list[dict]:
    with closing(sqlite3.connect(manager.db_path(output_context()))) as conn:
        return pd.read_sql_query(
            "SELECT name, count(*) AS n, sum(id) AS ids, count(name) AS named FROM things "
            "GROUP BY name ORDER BY name", conn).to_dict("records")


def test_running_totals_follow_inserts_updates_and_deletes(manager):
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00"),
                                                    (2, "a", "2026-05-28 02:00"),
                                                    (3, "b", "2026-05-28 03:00")]))
    assert county_totals(manager) == group_by(manager)  # built from the table, once
    # 2 moves from a to c, 3 is rewritten in place, 4 is new; then group b loses its only row
    manager.handle_output(output_context(first="2026-05-29"), things(
        [(2, "c", "2026-05-29 01:00"), (3, "b", "2026-05-29 02:00"), (4, "a", "2026-05-29 03:00")]))
    manager.handle_output(output_context(first="2026-05-29"),  # an older version: ignored
                          things([(4, "z", "2026-05-28 23:00")]))
    tombstones = things([(3, "b", "2026-05-29 02:00")]).assign(
        deleted_at=pd.Timestamp("2026-05-30", tz="UTC").as_unit("us"))
    deleting = manager.open_delete("things", output_context().definition_metadata, "run",
                                   OutputTransactions())
    deleting.write(removals(tombstones, "deleted_at"), tombstones)
    deleting.finish().commit()
    assert county_totals(manager) == group_by(manager) == [
        {"name": "a", "n": 2, "ids": 5, "named": 2}, {"name": "c", "n": 1, "ids": 2, "named": 1}]


def test_running_totals_are_rebuilt_when_the_requested_totals_change(manager):
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00"),
                                                    (2, "b", "2026-05-28 02:00")]))
    assert county_totals(manager, {"by": "name", "values": {"n": ["count", "*"]}}) == [
        {"name": "a", "n": 1}, {"name": "b", "n": 1}]
    manager.handle_output(output_context(), things([(3, "a", "2026-05-28 03:00")]))
    assert county_totals(manager) == group_by(manager)


def test_aggregate_that_cannot_be_kept_running_is_refused(manager):
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00")]))
    with pytest.raises(ValueError, match="uses 'max'; the functions are count, sum"):
        county_totals(manager, {"by": "name", "values": {"top": ["max", "id"]}})


def test_iter_columns_reads_every_row_whatever_the_window_and_first_values(manager, monkeypatch):
    """What the checks and the delete check read back: every row, its text column NULL in the
    whole first chunk (Arrow types come from the first values) and text after, read through
    the index for a narrow window and by a scan for one that holds most rows."""
    monkeypatch.setattr(sqlite_io_manager, "ROWS_PER_CHUNK", 3)
    rows = [(i, None if i <= 4 else f"n{i}", f"2026-05-{i:02d} 01:00") for i in range(1, 21)]
    manager.handle_output(output_context(), things(rows))

    def read(window: TimeWindow | None) -> list[tuple]:
        chunks = list(manager.iter_columns("things", storage_metadata(COLUMNS, ["sqlite"]),
                                           ["id", "name"], window))
        assert all(len(chunk) <= 3 for chunk in chunks)
        return [(int(i), name) for chunk in chunks for i, name in
                zip(chunk["id"], chunk["name"].replace({np.nan: None}), strict=True)]

    everything = TimeWindow(datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC))
    assert read(None) == read(everything) == [(i, name) for i, name, _ in rows]
    narrow = TimeWindow(datetime(2026, 5, 2, tzinfo=UTC), datetime(2026, 5, 4, tzinfo=UTC))
    assert read(narrow) == [(2, None), (3, None)]


def test_iter_columns_waits_for_a_writer_holding_the_file(manager):
    """Two syncs at once: one reads back the rows while the other holds the file in an
    exclusive lock (a database in rollback mode, as before WAL is set; CI once failed here
    with "database is locked"). The read waits for the lock and returns every row. The lock
    is held by another process, as a second sync is: within one process SQLite's locks do
    not stop each other."""
    rows = [(i, f"n{i}", f"2026-05-{i:02d} 01:00") for i in range(1, 6)]
    manager.handle_output(output_context(), things(rows))
    path = manager.db_path(output_context())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_EXCLUSIVE, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        chunks = list(manager.iter_columns("things", storage_metadata(COLUMNS, ["sqlite"]),
                                           ["id"], None))
    finally:
        holder.wait(timeout=60)
    assert [int(i) for chunk in chunks for i in chunk["id"]] == [i for i, _, _ in rows]


HOLD_EXCLUSIVE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=DELETE")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(1)
conn.execute("COMMIT")
"""
