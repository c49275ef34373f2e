"""What a county GIS user checks after a sync: every output holds exactly the source's rows.

Used by the end-to-end tests for each source kind.
"""

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
import sqlalchemy as sa

from countysync_assets.partitions import PARTITIONS

WORKING = ["id", "parcel_id", "owner", "use_code", "situs_address", "updated_at"]
STATS = ["id", "use_code", "acres", "land_value", "improvement_value", "assessed_value",
         "tax_year", "updated_at"]


def source_rows(url: str) -> pd.DataFrame:
    """The source table, with updated_at as the ISO text every output uses, and the
    partition that holds each row."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text('SELECT * FROM "MasterParcels"'), conn)
    engine.dispose()
    stamps = pd.to_datetime(frame["updated_at"]).dt.tz_localize("UTC")
    frame["updated_at"] = stamps.dt.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    # daily windows; rows before the partitions' start are the first window's baseline
    frame["partition"] = stamps.dt.strftime("%Y-%m-%d").where(
        stamps >= PARTITIONS.start, PARTITIONS.get_first_partition_key())
    return frame.sort_values("id", ignore_index=True)


def sqlite_table(path: Path, table: str, order_by: str = "id") -> pd.DataFrame:
    """A table of an output database, after SQLite's own integrity check."""
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return pd.read_sql_query(f'SELECT * FROM "{table}" ORDER BY "{order_by}"', conn)


def assert_same_rows(actual: pd.DataFrame, expected: pd.DataFrame, columns: list[str]) -> None:
    pd.testing.assert_frame_equal(
        actual[columns].sort_values("id", ignore_index=True),
        expected[columns].sort_values("id", ignore_index=True),
        check_dtype=False,
    )


def assert_outputs_match_source(url: str, export_dir: Path, keys: list[str],
                                file_keys: list[str] | None = None) -> None:
    """Every current-state output equals the source row by row for the partitions ``keys``,
    and so does each per-window change file of ``file_keys`` (default: ``keys``).

    A change file records a window's rows as they were when it was synced: after a row is
    edited again it moves to a later window, and only that window's file lists it anew.
    """
    source = source_rows(url)
    source = source[source["partition"].isin(keys)]
    assert len(source), "the source has no rows in these partitions"

    assert_same_rows(sqlite_table(export_dir / "working_db.sqlite", "working"), source, WORKING)
    assert_same_rows(sqlite_table(export_dir / "stats_db.sqlite", "stats"), source, STATS)

    summary = sqlite_table(export_dir / "stats_db.sqlite", "use_code_summary", "use_code")
    expected = source.groupby("use_code").agg(parcel_count=("id", "size"),
                                              total_assessed_value=("assessed_value", "sum"),
                                              total_acres=("acres", "sum"))
    summary = summary.set_index("use_code").sort_index()
    expected = expected.sort_index()
    assert summary[["parcel_count", "total_assessed_value"]].equals(
        expected[["parcel_count", "total_assessed_value"]])
    assert np.allclose(summary["total_acres"], expected["total_acres"].round(4), atol=1e-4)

    layer = pyogrio.read_dataframe(export_dir / "geo_db.gpkg", layer="parcels")
    assert layer.crs.to_epsg() == 2286
    assert sorted(layer["id"]) == sorted(source["id"])
    merged = layer.merge(source[["id", "geometry", "parcel_id"]], on="id",
                         suffixes=("", "_source"))
    assert (merged["parcel_id"] == merged["parcel_id_source"]).all()
    source_area = shapely.area(shapely.from_wkt(merged["geometry_source"].to_numpy()))
    assert (abs(merged.geometry.area.to_numpy() - source_area) <= source_area * 1e-4).all()
    with closing(sqlite3.connect(export_dir / "geo_db.gpkg")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        indexed = conn.execute("SELECT count(*) FROM rtree_parcels_geom").fetchone()[0]
    assert indexed == len(layer), "the spatial index must hold every parcel"

    for key in keys if file_keys is None else file_keys:
        window = source[source["partition"] == key]
        csv = pd.read_csv(export_dir / "working" / f"{key}.csv", dtype={"use_code": str})
        assert_same_rows(csv, window, WORKING)
        records = pd.DataFrame(json.loads((export_dir / "working" / f"{key}.json").read_text()),
                               columns=WORKING)
        assert_same_rows(records, window, WORKING)
        stats_csv = pd.read_csv(export_dir / "stats" / f"{key}.csv", dtype={"use_code": str})
        assert_same_rows(stats_csv, window, STATS)
        assert_geojson_matches(export_dir / "parcel_geometry" / f"{key}.geojson", window)


def assert_geojson_matches(path: Path, window: pd.DataFrame) -> None:
    """RFC 7946: opens in GDAL, WGS 84 lon/lat, no crs member, same parcels as the source."""
    document = json.loads(path.read_text())
    assert document["type"] == "FeatureCollection"
    assert "crs" not in document
    features = pyogrio.read_dataframe(path)
    assert sorted(features["id"]) == sorted(window["id"])
    if len(features):
        minx, miny, maxx, maxy = features.total_bounds
        assert -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90
        # Benton County, Washington: lon about -120..-119, lat about 46..46.5
        assert -121 < minx < maxx < -118 and 45.5 < miny < maxy < 47
        expected = gpd.GeoSeries.from_wkt(window.sort_values("id")["geometry"].to_numpy(),
                                          crs=2286).to_crs(4326)
        got = features.sort_values("id").geometry.to_numpy()
        # RFC 7946 output is rewound and rounded to 7 decimals (about 1 cm)
        assert (shapely.hausdorff_distance(got, expected.to_numpy()) < 1e-6).all()


def partition_keys(first: str, last: str) -> list[str]:
    keys = PARTITIONS.get_partition_keys()
    return keys[keys.index(first): keys.index(last) + 1]


def snapshot(export_dir: Path) -> dict:
    """Everything a rerun must leave as it was: table rows and file bytes (not the log)."""
    state: dict = {}
    for path in sorted(export_dir.glob("*.sqlite")):
        with closing(sqlite3.connect(path)) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                         "AND name != 'sync_log'"):  # a log grows by design
                state[f"{path.name}:{table}"] = conn.execute(
                    f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
    with closing(sqlite3.connect(export_dir / "geo_db.gpkg")) as conn:
        state["gpkg"] = conn.execute("SELECT * FROM parcels ORDER BY fid").fetchall()
        state["gpkg_rtree"] = conn.execute("SELECT * FROM rtree_parcels_geom ORDER BY id") \
            .fetchall()
    for path in sorted(export_dir.rglob("*")):
        if path.is_file() and path.suffix in {".csv", ".json", ".geojson"}:
            state[str(path.relative_to(export_dir))] = path.read_bytes()
    return state
