"""Deletes, found by key reconciliation: a parcel retired in the master table leaves every
current-state output, keeps a tombstone, and is listed in the run's change files."""

import sqlite3
from contextlib import closing
from datetime import timedelta

import pandas as pd
import pyogrio
from conftest import AS_OF, execute, materialize_range
from dagster import materialize
from output_checks import source_rows, sqlite_table

from countysync_assets.definitions import all_assets, all_checks
from countysync_assets.demo_source import churn
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.resources.master_parcels_source import MasterParcelsSource


def reconcile(url, exports, instance):
    result = materialize([*all_assets, *all_checks],
                         selection=["deleted_parcels", "unplaced_parcels"],
                         instance=instance,
                         resources={"source": MasterParcelsSource(url=url),
                                    "io_manager": ExportIOManager(export_dir=str(exports))})
    assert result.success
    return result


def ids(exports, db: str, table: str) -> set[int]:
    return set(sqlite_table(exports / db, table)["id"])


def test_deleted_parcels_leave_every_output_and_keep_a_tombstone(demo_url, tmp_path, instance):
    exports = tmp_path / "exports"
    source = MasterParcelsSource(url=demo_url)
    assert materialize_range(source, exports, instance).success
    before = set(source_rows(demo_url)["id"])
    churn(demo_url, deletes=15, seed=4, now=AS_OF + timedelta(hours=1))
    gone = before - set(source_rows(demo_url)["id"])
    assert len(gone) == 15

    reconcile(demo_url, exports, instance)
    remaining = before - gone
    for db, table in (("working_db.sqlite", "working"), ("stats_db.sqlite", "stats")):
        assert ids(exports, db, table) == remaining, table
        tombstones = sqlite_table(exports / db, "deleted_parcels")
        assert set(tombstones["id"]) == gone
        assert tombstones["deleted_at"].str.endswith("+00:00").all()
    layer = pyogrio.read_dataframe(exports / "geo_db.gpkg", layer="parcels")
    assert set(layer["id"]) == remaining
    with closing(sqlite3.connect(exports / "geo_db.gpkg")) as conn:
        assert conn.execute("SELECT count(*) FROM rtree_parcels_geom").fetchone()[0] == len(layer)
    assert set(pd.read_csv(exports / "deleted_parcels.csv")["id"]) == gone
    assert set(pd.read_json(exports / "deleted_parcels.json")["id"]) == gone
    with closing(sqlite3.connect(exports / "working_db.sqlite")) as conn:
        logged = conn.execute("SELECT deleted FROM sync_log WHERE asset = 'working' "
                              "ORDER BY logged_at DESC").fetchone()[0]
    assert logged == 15

    reconcile(demo_url, exports, instance)  # a rerun finds nothing more to delete
    assert ids(exports, "working_db.sqlite", "working") == remaining
    assert pd.read_csv(exports / "deleted_parcels.csv").empty


def test_an_id_that_comes_back_is_synced_again_and_not_deleted(demo_url, tmp_path, instance):
    exports = tmp_path / "exports"
    source = MasterParcelsSource(url=demo_url)
    materialize_range(source, exports, instance)
    execute(demo_url, 'CREATE TABLE parked AS SELECT * FROM "MasterParcels" WHERE id = 11')
    execute(demo_url, 'DELETE FROM "MasterParcels" WHERE id = 11')
    reconcile(demo_url, exports, instance)
    assert 11 not in ids(exports, "working_db.sqlite", "working")
    execute(demo_url, 'INSERT INTO "MasterParcels" SELECT * FROM parked')
    execute(demo_url, 'UPDATE "MasterParcels" SET updated_at = :t WHERE id = 11',
            t="2026-06-01 03:00:00.000000")
    assert materialize_range(source, exports, instance, "2026-06-01", "2026-06-01").success
    reconcile(demo_url, exports, instance)
    assert 11 in ids(exports, "working_db.sqlite", "working")
    assert 11 in set(pyogrio.read_dataframe(exports / "geo_db.gpkg", layer="parcels")["id"])


def test_the_summary_follows_a_delete_check_started_on_its_own(demo_url, tmp_path, instance):
    """README: "select deleted_parcels and Materialize". The summary must not stay stale:
    the summary's automation requests it once after such a check, and not after a run that
    rebuilt it already."""
    from dagster import AssetKey, evaluate_automation_conditions

    from countysync_assets.definitions import defs

    exports = tmp_path / "exports"
    assert materialize_range(MasterParcelsSource(url=demo_url), exports, instance).success
    tick = evaluate_automation_conditions(defs, instance)  # the first tick requests nothing
    assert tick.total_requested == 0

    churn(demo_url, deletes=5, seed=4, now=AS_OF + timedelta(hours=1))
    reconcile(demo_url, exports, instance)  # deleted_parcels (and unplaced) alone
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert tick.get_num_requested(AssetKey("use_code_summary")) == 1
    assert tick.get_num_requested(AssetKey("sync_status_map")) == 1  # the map follows too
    assert tick.total_requested == 2

    churn(demo_url, deletes=3, seed=5, now=AS_OF + timedelta(hours=2))
    result = materialize(all_assets, instance=instance,
                         selection=["deleted_parcels", "unplaced_parcels", "use_code_summary"],
                         resources={"source": MasterParcelsSource(url=demo_url),
                                    "io_manager": ExportIOManager(export_dir=str(exports))})
    assert result.success  # reconcile_deletes' selection: the summary rebuilt in the run
    tick = evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert tick.get_num_requested(AssetKey("use_code_summary")) == 0
