"""The checks on the published parcels: they pass after a sync, and fail, naming the parcels,
when an output no longer agrees (a row removed from one file, a parcel number blanked by hand
in a desktop tool, a parcel the source deleted, a self-crossing outline, a GeoJSON file in
feet)."""

import re
import sqlite3
from contextlib import closing
from datetime import timedelta

import pyogrio
import shapely
from conftest import AS_OF, FIRST_KEY, LAST_KEY, materialize_range
from dagster import AssetCheckSeverity, AssetSelection, materialize
from test_deletes import reconcile

from countysync_assets.assets.output_checks import COUNTY, RUN
from countysync_assets.definitions import all_assets, all_checks
from countysync_assets.demo_source import churn
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.resources.master_parcels_source import MasterParcelsSource


def run_checks(url, exports, instance, asset: str = "working", key: str = LAST_KEY,
               formats: dict | None = None) -> dict:
    """The checks on ``asset`` alone, for partition ``key`` (as after an incremental sync of
    that window, or the UI's Execute on a partition's check)."""
    result = materialize([*all_assets, *all_checks], instance=instance,
                         tags={"dagster/partition": key},
                         selection=AssetSelection.checks_for_assets(asset),
                         resources={"source": MasterParcelsSource(url=url),
                                    "io_manager": ExportIOManager(export_dir=str(exports),
                                                                  formats=formats or {})},
                         raise_on_error=False)
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def one_id(path, table: str, where: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"SELECT min(id) FROM {table} WHERE {where}").fetchone()[0]


IN_LAST = f"updated_at >= '{LAST_KEY}'"  # rows the last window's checks compare by id


def test_checks_pass_after_a_sync_and_name_the_parcels_when_outputs_disagree(
        demo_url, tmp_path, instance):
    exports = tmp_path / "exports"
    assert materialize_range(MasterParcelsSource(url=demo_url), exports, instance).success
    checks = run_checks(demo_url, exports, instance)
    assert checks["outputs_agree"].passed and checks["parcel_id_present"].passed
    agree = checks["outputs_agree"].metadata
    assert agree["parcels"].value == 2_000 and agree["checked"].value == RUN
    assert 0 < agree["parcels_compared_by_id"].value < 2_000  # the window's, by index

    # a stats row removed outside the checked window: the counts differ, so every id is read
    gone = one_id(exports / "stats_db.sqlite", "stats", f"updated_at < '{FIRST_KEY}T12'")
    blank = one_id(exports / "working_db.sqlite", "working", IN_LAST)
    with closing(sqlite3.connect(exports / "stats_db.sqlite")) as conn, conn:
        conn.execute("DELETE FROM stats WHERE id = ?", (gone,))
    with closing(sqlite3.connect(exports / "working_db.sqlite")) as conn, conn:
        conn.execute("UPDATE working SET parcel_id = NULL WHERE id = ?", (blank,))
    checks = run_checks(demo_url, exports, instance)
    agree, numbered = checks["outputs_agree"], checks["parcel_id_present"]
    assert not agree.passed and agree.metadata["in_working_or_stats_only"].value == 1
    assert agree.metadata["checked"].value == COUNTY
    assert agree.metadata["sample_ids_working_vs_stats"].value == str(gone)
    assert not numbered.passed and numbered.metadata["sample_ids"].value == str(blank)


def test_outputs_left_out_by_the_formats_setting_are_not_compared(demo_url, tmp_path,
                                                                   instance):
    """A county that keeps only the tables (COUNTYSYNC_FORMATS without the parcel layer):
    the checks compare what is kept, and pass."""
    exports, tabular = tmp_path / "exports", {"parcel_geometry": [], "geometry_rejects": []}
    assert materialize_range(MasterParcelsSource(url=demo_url), exports, instance,
                             formats=tabular).success
    checks = run_checks(demo_url, exports, instance, formats=tabular)
    assert all(check.passed for check in checks.values()), checks
    assert checks["outputs_agree"].metadata["compared_with"].value == "stats"


def test_reconciliation_after_syncs_and_deletes_names_what_is_missing_or_gone(
        demo_url, tmp_path, instance):
    exports, working = tmp_path / "exports", tmp_path / "exports" / "working_db.sqlite"
    assert materialize_range(MasterParcelsSource(url=demo_url), exports, instance).success
    check = run_checks(demo_url, exports, instance)["source_rows_published"]
    assert check.passed and check.metadata["missing_from_outputs"].value == 0
    assert check.metadata["published_parcels"].value == check.metadata["source_parcels"].value

    churn(demo_url, deletes=3, seed=31, now=AS_OF - timedelta(hours=1))
    check = run_checks(demo_url, exports, instance)["source_rows_published"]
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert check.metadata["deleted_in_source_still_published"].value == 3
    assert check.metadata["checked"].value == RUN  # counted: the delete check names them
    reconciled = reconcile(demo_url, exports, instance)
    after = {e.asset_key.path[-1]: e for e in reconciled.get_asset_check_evaluations()}
    assert after["deleted_parcels"].passed  # the delete check left exactly the source's parcels

    lost = one_id(working, "working", "1 = 1")
    with closing(sqlite3.connect(working)) as conn, conn:
        row = conn.execute("SELECT * FROM working WHERE id = ?", (lost,)).fetchone()
        conn.execute("DELETE FROM working WHERE id = ?", (lost,))
    check = run_checks(demo_url, exports, instance)["source_rows_published"]
    assert not check.passed and check.severity == AssetCheckSeverity.ERROR
    assert check.metadata["missing_from_outputs"].value == 1
    assert check.metadata["sample_missing_ids"].value == str(lost)

    # a parcel of the window lost and one the source never had added: the counts agree, the
    # window's ids do not
    with closing(sqlite3.connect(working)) as conn, conn:
        conn.execute(f"INSERT INTO working VALUES ({', '.join('?' * len(row))})", row)
        lost = conn.execute(f"SELECT min(id) FROM working WHERE {IN_LAST}").fetchone()[0]
        conn.execute("UPDATE working SET id = 1000000000 WHERE id = ?", (lost,))
    check = run_checks(demo_url, exports, instance)["source_rows_published"]
    assert check.metadata["checked"].value == RUN and not check.passed
    assert check.metadata["sample_missing_ids"].value == str(lost)
    assert check.metadata["sample_deleted_ids"].value == "1000000000"


def test_each_partition_s_outlines_and_geojson_are_checked(demo_url, tmp_path, instance):
    exports = tmp_path / "exports"
    assert materialize_range(MasterParcelsSource(url=demo_url), exports, instance).success
    layer = pyogrio.read_dataframe(exports / "geo_db.gpkg", layer="parcels")
    in_window = layer[layer["updated_at"].astype(str).str.startswith(LAST_KEY)]
    checks = run_checks(demo_url, exports, instance, "parcel_geometry")
    shapes, geojson = checks["geometry_valid_in_crs"], checks["geojson_in_wgs84"]
    assert shapes.passed and shapes.metadata["outlines_checked"].value == len(in_window) > 0
    assert shapes.metadata["layer_epsg"].value == shapes.metadata["source_epsg"].value
    assert geojson.passed and geojson.metadata["features"].value == len(in_window)

    # a self-crossing outline written into the layer by hand, a GeoJSON coordinate in feet
    bowtie = in_window.iloc[:1].assign(
        id=10**9, geometry=[shapely.MultiPolygon([shapely.Polygon(
            [(0, 0), (10, 10), (10, 0), (0, 10)])])])
    pyogrio.write_dataframe(bowtie, exports / "geo_db.gpkg", layer="parcels", append=True)
    path = exports / "parcel_geometry" / f"{LAST_KEY}.geojson"
    text = path.read_text()
    first = re.search(r"\[(-?\d+\.\d+),", text)
    path.write_text(text[:first.start(1)] + "1234567.5" + text[first.end(1):])
    checks = run_checks(demo_url, exports, instance, "parcel_geometry")
    shapes, geojson = checks["geometry_valid_in_crs"], checks["geojson_in_wgs84"]
    assert not shapes.passed and shapes.metadata["invalid"].value == 1
    assert shapes.metadata["sample_invalid_ids"].value == str(10**9)
    assert not geojson.passed and geojson.metadata["files_out_of_range"].value == path.name
