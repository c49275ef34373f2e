"""The change sensor against what a cursor cannot see or would choke on: rows dated 2999 or
9999-12-31, a table emptied and reloaded with the same rows, a mass delete, and a change set
larger than one poll inside the look-back. One bad row never stops the county's sync."""

from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import AS_OF, FIRST_KEY, execute
from dagster import DagsterInstance
from output_checks import assert_outputs_match_source, partition_keys, sqlite_table

from countysync_assets.demo_source import churn, create_demo_source
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors import source_changes_sensor as sensor_module
from countysync_assets.sensors.in_process import InProcessSync

KEYS = partition_keys(FIRST_KEY, "2026-06-01")


def sensor_over(url: str, exports, instance: DagsterInstance) -> InProcessSync:
    return InProcessSync(MasterParcelsSource(url=url), exports, instance)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_rows_dated_in_the_far_future_never_stop_the_sync(backend, request, tmp_path,
                                                          instance):
    """2999 crashed the sensor on PostgreSQL (pandas overflow) and 9999-12-31 made every tick
    fail, so a good row changed beside them never synced."""
    url = f"sqlite:///{tmp_path / 'source.sqlite'}" if backend == "sqlite" else \
        request.getfixturevalue("pg_database_url")
    create_demo_source(url, rows=400, seed=5, as_of=AS_OF, days=4)
    execute(url, 'UPDATE "MasterParcels" SET updated_at = :t WHERE id = 3',
            t="2999-01-01 00:00:00")
    execute(url, 'UPDATE "MasterParcels" SET updated_at = :t WHERE id = 4',
            t="9999-12-31 23:59:59.999999")
    syncing = sensor_over(url, tmp_path / "exports", instance)
    assert syncing.catch_up()
    churn(url, updates=5, seed=1, now=AS_OF + timedelta(hours=2))
    assert syncing.catch_up()
    assert syncing.reconcile()
    exports = tmp_path / "exports"
    unplaced = sqlite_table(exports / "rejects_db.sqlite", "unplaced_parcels", "id")
    assert unplaced["id"].tolist() == ["3", "4"]
    assert unplaced["reason"].str.contains("is not an edit time").all()
    working = set(sqlite_table(exports / "working_db.sqlite", "working")["id"])
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        expected = set(conn.exec_driver_sql(
            'SELECT id FROM "MasterParcels" WHERE id NOT IN (3, 4)').scalars())
    engine.dispose()
    assert working == expected


def test_a_table_emptied_and_reloaded_with_the_same_rows_comes_back(syncing, demo_url,
                                                                    tmp_path):
    """Rows deleted (and removed by the delete check), then reloaded with their old
    updated_at: the sensor sees the table grow without newer rows and syncs every window."""
    exports = tmp_path / "exports"
    assert syncing.catch_up()
    execute(demo_url, 'CREATE TABLE parked AS SELECT * FROM "MasterParcels" WHERE id <= 60')
    execute(demo_url, 'DELETE FROM "MasterParcels" WHERE id <= 60')
    assert syncing.catch_up()  # the table shrank: the sensor runs the delete check
    assert not {1, 60} & set(sqlite_table(exports / "working_db.sqlite", "working")["id"])
    execute(demo_url, 'INSERT INTO "MasterParcels" SELECT * FROM parked')
    assert syncing.catch_up()
    assert_outputs_match_source(demo_url, exports, KEYS[:-1], file_keys=[])


@pytest.mark.faults
def test_a_mass_delete_is_refused_until_confirmed(syncing, demo_url, tmp_path, reliability):
    exports = tmp_path / "exports"
    assert syncing.catch_up()
    execute(demo_url, 'CREATE TABLE parked AS SELECT * FROM "MasterParcels"')
    execute(demo_url, 'DELETE FROM "MasterParcels"')  # the DBA empties it for a reload
    result = syncing.defs.resolve_job_def("reconcile_deletes").execute_in_process(
        instance=syncing.instance, raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].event_specific_data.error.message
    assert "refuses to delete 2000 of 2000 synced parcels" in message
    assert "confirm_mass_delete" in message
    assert len(sqlite_table(exports / "working_db.sqlite", "working")) == 2000

    execute(demo_url, 'INSERT INTO "MasterParcels" SELECT * FROM parked')
    assert syncing.catch_up()  # the reload syncs as usual: nothing was lost on the way
    assert_outputs_match_source(demo_url, exports, KEYS[:-1], file_keys=[])

    execute(demo_url, 'DELETE FROM "MasterParcels" WHERE id > 1000')
    confirmed = syncing.defs.resolve_job_def("reconcile_deletes").execute_in_process(
        instance=syncing.instance, tags={"countysync/confirm_mass_delete": "true"})
    assert confirmed.success
    assert len(sqlite_table(exports / "working_db.sqlite", "working")) == 1000
    reliability(suite="source", case="MasterParcels emptied for a reload", trials=1,
                outcome="delete check refuses, outputs kept; the reload syncs as usual; a "
                "confirmed mass delete deletes")


def test_catch_up_ends_when_one_window_changed_more_than_a_poll_holds(syncing, demo_url,
                                                                      tmp_path, monkeypatch):
    monkeypatch.setattr(sensor_module, "MAX_ROWS_PER_POLL", 50)
    assert syncing.catch_up()
    execute(demo_url, 'UPDATE "MasterParcels" SET owner = \'NEW OWNER\', updated_at = :t '
            'WHERE id <= 120', t="2026-06-01 05:00:00.000000")
    assert syncing.catch_up()
    owners = sqlite_table(tmp_path / "exports" / "working_db.sqlite", "working")
    assert (owners.loc[owners["id"] <= 120, "owner"] == "NEW OWNER").all()
