"""GeoPackage IO manager on real GeoPackage files: merged current state with a spatial index."""

import sqlite3
import threading
from contextlib import closing

import geopandas as gpd
import pandas as pd
import pyogrio
import pytest
import shapely
from io_contexts import input_context, logged, output_context

from countysync_assets.assets.asset_metadata import storage_metadata
from countysync_assets.io_managers.format_io_manager import GPKG_LAYER, OutputTarget
from countysync_assets.io_managers.geopackage_io_manager import GeoPackageIOManager
from countysync_assets.io_managers.output_transactions import OutputTransactions

METADATA = {**storage_metadata({"id": "integer: key", "name": "string: value",
                                "updated_at": "timestamp: cursor"}, ["gpkg"]),
            GPKG_LAYER: "parcels"}


def parcels(rows: list[tuple[int, str, str, float]]) -> gpd.GeoDataFrame:
    """Parcels ``(id, name, updated_at, x offset)`` as 100 ft squares in EPSG:2286."""
    return gpd.GeoDataFrame(
        {"id": [r[0] for r in rows], "name": [r[1] for r in rows],
         "updated_at": pd.to_datetime([r[2] for r in rows], utc=True, format="ISO8601")},
        geometry=[shapely.box(1_950_000 + r[3], 320_000, 1_950_100 + r[3], 320_100)
                  for r in rows], crs=2286)


def write(manager, first, rows):
    context = output_context(first=first, metadata=METADATA)
    manager.handle_output(context, parcels(rows))
    return logged(context)


def layer(tmp_path) -> gpd.GeoDataFrame:
    return pyogrio.read_dataframe(tmp_path / "geo_db.gpkg", layer="parcels").sort_values("id")


def assert_spatial_index_matches(tmp_path) -> None:
    """The R-tree holds exactly each feature's bounds, as QGIS relies on."""
    with closing(sqlite3.connect(tmp_path / "geo_db.gpkg")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        index = dict(((r[0]), r[1:]) for r in conn.execute(
            "SELECT id, minx, maxx, miny, maxy FROM rtree_parcels_geom"))
        fids = dict(conn.execute("SELECT fid, id FROM parcels").fetchall())
    features = layer(tmp_path)
    assert set(index) == set(fids)
    for fid, parcel_id in fids.items():
        minx, miny, maxx, maxy = features.loc[features["id"] == parcel_id].total_bounds
        got = index[fid]
        assert abs(got[0] - minx) < 1 and abs(got[1] - maxx) < 1  # rtree stores float32
        assert abs(got[2] - miny) < 1 and abs(got[3] - maxy) < 1


def test_first_write_creates_layer_in_native_crs(tmp_path):
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    metadata = write(manager, "2026-05-28", [(1, "a", "2026-05-28 01:00", 0),
                                             (2, "b", "2026-05-28 02:00", 500)])
    assert metadata["gpkg_rows_inserted"] == 2
    info = pyogrio.read_info(tmp_path / "geo_db.gpkg", layer="parcels")
    assert info["crs"] == "EPSG:2286" and info["geometry_type"] == "MultiPolygon"
    assert info["features"] == 2
    assert_spatial_index_matches(tmp_path)


def test_upsert_moves_geometry_and_keeps_index_in_step(tmp_path):
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    write(manager, "2026-05-28", [(1, "a", "2026-05-28 01:00", 0),
                                  (2, "b", "2026-05-28 02:00", 500)])
    metadata = write(manager, "2026-05-29", [(2, "b2", "2026-05-29 02:00", 9000),
                                             (3, "c", "2026-05-29 03:00", 1000)])
    assert (metadata["gpkg_rows_inserted"], metadata["gpkg_rows_updated"]) == (1, 1)
    features = layer(tmp_path)
    assert features["name"].tolist() == ["a", "b2", "c"]
    assert features.loc[features["id"] == 2].total_bounds[0] == 1_959_000
    assert_spatial_index_matches(tmp_path)
    info = pyogrio.read_info(tmp_path / "geo_db.gpkg", layer="parcels")
    assert info["features"] == 3  # GDAL's feature count follows the triggers
    assert info["total_bounds"][2] == 1_959_100  # the layer extent grew with the moved parcel


def test_attribute_edits_and_moved_outlines_in_one_merge(tmp_path):
    """Most edits of a parcel are of its attributes: their outline is not written again (the
    R-tree triggers would rewrite its entry), while a moved outline in the same batch is,
    with its index entry; a rerun of the batch changes nothing."""
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    write(manager, "2026-05-28", [(1, "a", "2026-05-28 01:00", 0),
                                  (2, "b", "2026-05-28 02:00", 500),
                                  (3, "c", "2026-05-28 03:00", 1000)])
    with closing(sqlite3.connect(tmp_path / "geo_db.gpkg")) as conn:
        outline_before = conn.execute("SELECT geom FROM parcels WHERE id = 1").fetchone()[0]
    batch = [(1, "a2", "2026-05-29 01:00", 0), (2, "b2", "2026-05-29 02:00", 7000)]
    metadata = write(manager, "2026-05-29", batch)
    assert (metadata["gpkg_rows_inserted"], metadata["gpkg_rows_updated"]) == (0, 2)
    features = layer(tmp_path)
    assert features["name"].tolist() == ["a2", "b2", "c"]
    assert features["updated_at"].dt.day.tolist() == [29, 29, 28]
    assert features.loc[features["id"] == 2].total_bounds[0] == 1_957_000
    with closing(sqlite3.connect(tmp_path / "geo_db.gpkg")) as conn:
        assert conn.execute("SELECT geom FROM parcels WHERE id = 1").fetchone()[0] == \
            outline_before
    assert_spatial_index_matches(tmp_path)
    assert write(manager, "2026-05-29", batch)["gpkg_rows_updated"] == 0


def test_rerun_and_older_versions_change_nothing(tmp_path):
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    write(manager, "2026-05-29", [(1, "new", "2026-05-29 01:00:00.002", 0)])
    with closing(sqlite3.connect(tmp_path / "geo_db.gpkg")) as conn:
        before = conn.execute("SELECT * FROM parcels").fetchall()
    rerun = write(manager, "2026-05-29", [(1, "new", "2026-05-29 01:00:00.002", 0)])
    older = write(manager, "2026-05-28", [(1, "old", "2026-05-28 01:00", 50)])
    older_ms = write(manager, "2026-05-29", [(1, "old", "2026-05-29 01:00:00.001", 50)])
    assert rerun["gpkg_rows_updated"] == older["gpkg_rows_updated"] == 0
    assert older_ms["gpkg_rows_updated"] == 0
    with closing(sqlite3.connect(tmp_path / "geo_db.gpkg")) as conn:
        assert conn.execute("SELECT * FROM parcels").fetchall() == before


def test_empty_window_leaves_the_layer_alone(tmp_path):
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    write(manager, "2026-05-28", [])
    assert not (tmp_path / "geo_db.gpkg").exists()
    write(manager, "2026-05-28", [(1, "a", "2026-05-28 01:00", 0)])
    write(manager, "2026-05-29", [])
    assert layer(tmp_path)["id"].tolist() == [1]


def test_load_returns_features_of_the_requested_partitions(tmp_path):
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    write(manager, "2026-05-28", [(1, "a", "2026-05-28 01:00", 0)])
    write(manager, "2026-05-29", [(2, "b", "2026-05-29 00:00", 500)])
    loaded = manager.load_input(input_context(first="2026-05-29", metadata=METADATA))
    assert loaded["id"].tolist() == [2]
    assert loaded.crs.to_epsg() == 2286


def test_no_staging_files_are_left_behind(tmp_path):
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    write(manager, "2026-05-28", [(1, "a", "2026-05-28 01:00", 0)])
    write(manager, "2026-05-28", [(1, "b", "2026-05-28 02:00", 0)])
    assert [p.name for p in tmp_path.iterdir()] == ["geo_db.gpkg"]


def test_a_time_in_the_last_half_millisecond_stays_in_its_minute_and_can_be_updated(tmp_path):
    """GDAL rounds to milliseconds, so 01:59:59.9997 would be stored as "01:59:60.000", which
    no reader parses and which no later version could ever replace. It is kept as 59.999."""
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    write(manager, "2026-05-28", [(1, "a", "2026-05-28 01:59:59.999700", 0),
                                  (2, "b", "2026-05-28 23:59:59.999999", 500)])
    with closing(sqlite3.connect(tmp_path / "geo_db.gpkg")) as conn:
        stored = [row[0] for row in conn.execute("SELECT updated_at FROM parcels ORDER BY id")]
    assert stored == ["2026-05-28T01:59:59.999Z", "2026-05-28T23:59:59.999Z"]
    assert pd.api.types.is_datetime64_any_dtype(layer(tmp_path)["updated_at"])  # readable
    metadata = write(manager, "2026-05-28", [(1, "a2", "2026-05-28 02:00:00.000100", 0)])
    assert metadata["gpkg_rows_updated"] == 1
    assert layer(tmp_path)["name"].tolist() == ["a2", "b"]


def test_a_feature_stored_with_an_unreadable_time_is_replaced_by_the_next_version(tmp_path):
    """A layer written before the fix above holds "…:60.000Z"; the next sync repairs it."""
    pyogrio.write_dataframe(parcels([(1, "a", "2026-05-28 01:59:59.9997", 0)]),
                            tmp_path / "geo_db.gpkg", layer="parcels", use_arrow=True)
    with pytest.warns(UserWarning, match="Error parsing datetimes"):  # as readers find it
        assert layer(tmp_path)["updated_at"].tolist() == ["2026-05-28T01:59:60Z"]
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    metadata = write(manager, "2026-05-28", [(1, "a2", "2026-05-28 02:00", 0)])
    assert metadata["gpkg_rows_updated"] == 1
    assert layer(tmp_path)["name"].tolist() == ["a2"]
    assert_spatial_index_matches(tmp_path)


def open_writer(manager: GeoPackageIOManager):
    target = OutputTarget("parcel_geometry", METADATA, "run-1")
    return manager.open(target, OutputTransactions())


def test_a_write_rolled_back_midway_leaves_the_layer_and_no_file_or_thread(tmp_path):
    """GDAL writes the batches in one session on a thread of its own: a run that fails after
    some batches (another output, a kill of the sync) ends that session and leaves the
    published layer as it was, without a staging file."""
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    write(manager, "2026-05-28", [(1, "a", "2026-05-28 01:00", 0)])
    writer = open_writer(manager)
    writer.write(parcels([(1, "new", "2026-05-29 01:00", 300)]))
    writer.write(parcels([(2, "b", "2026-05-29 02:00", 600)]))
    writer.discard()
    assert layer(tmp_path)[["id", "name"]].values.tolist() == [[1, "a"]]
    assert [p.name for p in tmp_path.iterdir()] == ["geo_db.gpkg"]
    assert not [t for t in threading.enumerate() if t.name.startswith("gdal-write")]


def test_a_new_file_written_in_batches_holds_every_feature_in_its_spatial_index(tmp_path):
    """The first write of a county comes in many batches, one of them with a column that is
    empty throughout: one file, every feature in the R-tree, the column still text."""
    manager = GeoPackageIOManager(export_dir=str(tmp_path))
    writer = open_writer(manager)
    batches = [[(i, None if b == 1 else f"n{i}", "2026-05-28 01:00", i * 150)
                for i in range(b * 40, b * 40 + 40)] for b in range(3)]
    for rows in batches:
        writer.write(parcels(rows))
    writer.finish().commit()
    held = layer(tmp_path)
    assert held["id"].tolist() == list(range(120))
    assert held["name"].isna().sum() == 40 and held["name"].dropna().str.startswith("n").all()
    info = pyogrio.read_info(tmp_path / "geo_db.gpkg", layer="parcels")
    assert info["fields"].tolist() == ["id", "name", "updated_at"]
    assert info["dtypes"].tolist() == ["int64", "object", "datetime64[ms]"]
    assert_spatial_index_matches(tmp_path)
