"""SQLite IO manager on real SQLite files: the merged current state of an asset."""

import sqlite3
from contextlib import closing

import pandas as pd
import pytest
from dagster import build_input_context
from io_contexts import input_context, logged, output_context

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
    context = input_context()
    narrow = build_input_context(
        asset_key="things", asset_partitions_def=context.asset_partitions_def,
        asset_partition_key_range=context.asset_partition_key_range,
        upstream_output=context.upstream_output, definition_metadata={"columns": ["id", "name"]})
    assert list(manager.load_input(narrow).columns) == ["id", "name"]


def test_input_metadata_aggregate_is_totalled_by_sqlite(manager):
    manager.handle_output(output_context(), things([(1, "a", "2026-05-28 01:00"),
                                                    (2, "a", "2026-05-28 02:00"),
                                                    (3, "b", "2026-05-28 03:00")]))
    context = input_context()
    totals = build_input_context(
        asset_key="things", asset_partitions_def=context.asset_partitions_def,
        asset_partition_key_range=context.asset_partition_key_range,
        upstream_output=context.upstream_output, definition_metadata={"aggregate": {
            "by": "name", "values": {"n": ["count", "*"], "top": ["max", "id"]}}})
    loaded = manager.load_input(totals).sort_values("name")
    assert loaded.to_dict("records") == [{"name": "a", "n": 2, "top": 2},
                                         {"name": "b", "n": 1, "top": 3}]
