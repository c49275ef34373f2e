"""The trial findings of the reliability issues, each as its reproduction: an interrupted delete
check, a dropped source column, an epoch-number updated_at under partition-range, an empty
window, and a county emptied by a confirmed delete then reloaded. Plus the row checks as a
property: whatever the values, each row is published exactly or rejected with a reason."""

import sqlite3
from contextlib import closing

import pandas as pd
from conftest import FIRST_KEY, LAST_KEY, execute, materialize_range
from dagster import TimeWindow
from hypothesis import given, settings
from hypothesis import strategies as st
from output_checks import assert_outputs_match_source, partition_keys, snapshot, sqlite_table

from countysync_assets.assets.row_checks import check_rows
from countysync_assets.cli import main
from countysync_assets.demo_source import churn
from countysync_assets.resources.master_parcels_source import MasterParcelsSource

KEYS = partition_keys(FIRST_KEY, LAST_KEY)


def test_a_delete_check_interrupted_after_one_file_is_finished_by_the_next(syncing, demo_url,
                                                                          tmp_path):
    """Killed after one file committed its deletes (here working_db.sqlite), the old check
    left the parcels in the other outputs for good (that file no longer listed them)."""
    exports = tmp_path / "exports"
    assert syncing.catch_up()
    churn(demo_url, deletes=30, seed=9)
    gone = set(sqlite_table(exports / "working_db.sqlite", "working")["id"]) - set(
        pd.read_sql_query('SELECT id FROM "MasterParcels"',
                          sqlite3.connect(demo_url.removeprefix("sqlite:///")))["id"])
    with closing(sqlite3.connect(exports / "working_db.sqlite")) as conn, conn:
        conn.executemany("DELETE FROM working WHERE id = ?", [(i,) for i in gone])
    assert syncing.reconcile()
    assert_outputs_match_source(demo_url, exports, KEYS, file_keys=[])
    tombstones = set(sqlite_table(exports / "stats_db.sqlite", "deleted_parcels")["id"])
    assert tombstones == gone


def test_a_column_dropped_from_the_source_stops_the_sync_by_name(demo_url, tmp_path,
                                                                 instance):
    exports = tmp_path / "exports"
    source = MasterParcelsSource(url=demo_url)
    assert materialize_range(source, exports, instance).success
    before = snapshot(exports)
    execute(demo_url, 'ALTER TABLE "MasterParcels" DROP COLUMN owner')
    churn_free = materialize_range(MasterParcelsSource(url=demo_url), exports, instance,
                                   raise_on_error=False)
    assert not churn_free.success
    message = churn_free.get_step_failure_events()[0].event_specific_data.error.message
    assert "MasterParcels has no column(s) owner" in message, message
    assert snapshot(exports) == before


def test_partition_range_and_status_read_past_an_epoch_number_updated_at(demo_url, tmp_path,
                                                                        monkeypatch, capsys):
    execute(demo_url, 'UPDATE "MasterParcels" SET updated_at = 1780000000 WHERE id = 1')
    execute(demo_url, 'UPDATE "MasterParcels" SET updated_at = \'9999-12-31 00:00:00\' '
            'WHERE id = 2')
    monkeypatch.setenv("COUNTYSYNC_SOURCE_URL", demo_url)
    assert main(["partition-range"]) == 0
    assert capsys.readouterr().out.strip() == f"{FIRST_KEY}...{LAST_KEY}"


def test_a_window_with_no_rows_publishes_empty_files(demo_url, tmp_path, instance):
    exports = tmp_path / "exports"
    result = materialize_range(MasterParcelsSource(url=demo_url), exports, instance,
                               "2026-06-03", "2026-06-03")
    assert result.success
    assert pd.read_csv(exports / "working" / "2026-06-03.csv").empty


def test_a_county_emptied_by_a_confirmed_delete_then_reloaded_syncs_whole(syncing, demo_url,
                                                                         tmp_path):
    """After the outputs were emptied, the next sync used to fail with IndexError."""
    exports = tmp_path / "exports"
    assert syncing.catch_up()
    execute(demo_url, 'CREATE TABLE parked AS SELECT * FROM "MasterParcels"')
    execute(demo_url, 'DELETE FROM "MasterParcels"')
    assert syncing.defs.resolve_job_def("reconcile_deletes").execute_in_process(
        instance=syncing.instance, tags={"countysync/confirm_mass_delete": "true"}).success
    assert sqlite_table(exports / "working_db.sqlite", "working").empty
    assert syncing.catch_up()  # nothing to sync: no error either
    execute(demo_url, 'INSERT INTO "MasterParcels" SELECT * FROM parked')
    assert syncing.catch_up()
    assert_outputs_match_source(demo_url, exports, KEYS, file_keys=[])


WINDOW = TimeWindow(pd.Timestamp("2026-05-30", tz="UTC"), pd.Timestamp("2026-05-31", tz="UTC"))
anything = st.one_of(st.none(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=12), st.binary(max_size=4))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(1, 5), anything), anything, anything,
                          anything), min_size=1, max_size=8))
def test_each_row_is_published_exactly_or_rejected_with_a_reason(rows):
    frame = pd.DataFrame({
        "id": pd.Series([r[0] for r in rows], dtype=object),
        "parcel_id": pd.Series([r[1] for r in rows], dtype=object),
        "acres": pd.Series([r[2] for r in rows], dtype=object),
        "owner": pd.Series([r[3] for r in rows], dtype=object),
        "updated_at": pd.Timestamp("2026-05-30 12:00", tz="UTC"),
    })
    good, rejects = check_rows(frame, WINDOW)
    assert len(good) + len(rejects) == len(frame)
    assert rejects["reason"].str.len().gt(0).all()
    for row in good.itertuples():
        # numeric text ('7') is that number; anything else never becomes an id
        source = frame[pd.to_numeric(frame["id"], errors="coerce") == row.id]
        assert len(source) == 1  # an id on two rows is never published
        original = source.iloc[0]
        assert isinstance(row.parcel_id, str) and "\x00" not in row.parcel_id
        if original["acres"] is not None:
            assert float(row.acres) == float(original["acres"]) and row.acres >= 0
        if isinstance(original["owner"], str):
            assert row.owner == original["owner"]
