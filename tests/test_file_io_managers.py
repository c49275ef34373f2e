"""CSV, JSON and GeoJSON IO managers: one file per partition, published by atomic rename."""

import json

import geopandas as gpd
import pandas as pd
import pyogrio
import pytest
import shapely
from io_contexts import output_context

from countysync_assets.io_managers import geojson_io_manager
from countysync_assets.io_managers.csv_io_manager import CsvIOManager
from countysync_assets.io_managers.geojson_io_manager import GeoJsonIOManager
from countysync_assets.io_managers.json_io_manager import JsonIOManager
from countysync_assets.io_managers.publishing import export_path


def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [1, 2, 3],
        "name": ["a", "b", "c"],
        "updated_at": pd.to_datetime(["2026-05-28 00:00:00", "2026-05-28 23:59:59.999999",
                                      "2026-05-30 12:00:00.5"], utc=True, format="ISO8601"),
    })


def parcels() -> gpd.GeoDataFrame:
    """Two State Plane parcels near Kennewick (EPSG:2286, US feet)."""
    return gpd.GeoDataFrame(frame().iloc[:2], geometry=[
        shapely.box(1_950_000, 320_000, 1_950_200, 320_150),
        shapely.box(1_951_000, 321_000, 1_951_300, 321_100)], crs=2286)


def no_temp_files(folder) -> bool:
    return not [p for p in folder.rglob(".*")]


def test_csv_writes_one_file_per_partition_including_empty_windows(tmp_path):
    manager = CsvIOManager(export_dir=str(tmp_path))
    manager.handle_output(output_context(first="2026-05-28", last="2026-05-30"), frame())
    files = sorted(p.name for p in (tmp_path / "things").iterdir())
    assert files == ["2026-05-28.csv", "2026-05-29.csv", "2026-05-30.csv"]
    first = pd.read_csv(tmp_path / "things" / "2026-05-28.csv")
    assert first["id"].tolist() == [1, 2]
    assert first["updated_at"].tolist() == ["2026-05-28T00:00:00.000000+00:00",
                                            "2026-05-28T23:59:59.999999+00:00"]
    assert pd.read_csv(tmp_path / "things" / "2026-05-29.csv").empty
    assert no_temp_files(tmp_path)


def test_rerun_replaces_the_same_file_with_the_same_bytes(tmp_path):
    manager = CsvIOManager(export_dir=str(tmp_path))
    manager.handle_output(output_context(), frame().iloc[:2])
    path = tmp_path / "things" / "2026-05-28.csv"
    before = path.read_bytes()
    manager.handle_output(output_context(), frame().iloc[:1])
    assert pd.read_csv(path)["id"].tolist() == [1]
    manager.handle_output(output_context(), frame().iloc[:2])
    assert path.read_bytes() == before


def test_json_is_records_with_iso_offsets(tmp_path):
    JsonIOManager(export_dir=str(tmp_path)).handle_output(output_context(), frame().iloc[:2])
    records = json.loads((tmp_path / "things" / "2026-05-28.json").read_text())
    assert records == [
        {"id": 1, "name": "a", "updated_at": "2026-05-28T00:00:00.000000+00:00"},
        {"id": 2, "name": "b", "updated_at": "2026-05-28T23:59:59.999999+00:00"},
    ]


def test_geojson_is_rfc7946_wgs84_without_crs_member(tmp_path):
    GeoJsonIOManager(export_dir=str(tmp_path)).handle_output(output_context(), parcels())
    path = tmp_path / "things" / "2026-05-28.geojson"
    document = json.loads(path.read_text())
    assert "crs" not in document
    lon, lat = document["features"][0]["geometry"]["coordinates"][0][0][0]
    assert -119.5 < lon < -119.0 and 46.0 < lat < 46.5  # Kennewick, lon first
    assert document["features"][0]["properties"]["updated_at"] == \
        "2026-05-28T00:00:00.000000+00:00"
    read = pyogrio.read_dataframe(path)
    assert read.crs.to_epsg() == 4326
    back = read.to_crs(2286).area.to_numpy()
    assert back == pytest.approx(parcels().area.to_numpy(), rel=1e-4)


def test_geojson_encoded_in_slices_is_the_same_document(tmp_path, monkeypatch):
    """A batch is encoded a slice at a time (bounded memory): one feature per slice writes
    the bytes a single slice writes."""
    many = pd.concat([parcels()] * 3, ignore_index=True).assign(id=range(6))
    GeoJsonIOManager(export_dir=str(tmp_path / "whole")).handle_output(output_context(), many)
    monkeypatch.setattr(geojson_io_manager, "SLICE", 1)
    GeoJsonIOManager(export_dir=str(tmp_path / "sliced")).handle_output(output_context(), many)
    whole, sliced = (tmp_path / kind / "things" / "2026-05-28.geojson"
                     for kind in ("whole", "sliced"))
    assert sliced.read_bytes() == whole.read_bytes()
    assert [f["properties"]["id"] for f in json.loads(sliced.read_text())["features"]] == \
        list(range(6))


def test_geojson_of_an_empty_window_is_an_empty_feature_collection(tmp_path):
    GeoJsonIOManager(export_dir=str(tmp_path)).handle_output(
        output_context(first="2026-05-29"), parcels().iloc[:0])
    document = json.loads((tmp_path / "things" / "2026-05-29.geojson").read_text())
    assert document["type"] == "FeatureCollection" and document["features"] == []


def test_rows_outside_the_partitions_are_refused(tmp_path):
    with pytest.raises(ValueError, match="outside the partitions"):
        CsvIOManager(export_dir=str(tmp_path)).handle_output(output_context(), frame())
    assert not (tmp_path / "things").exists() or no_temp_files(tmp_path)


@pytest.mark.parametrize("bad", ["../escape", "..", "a/b", "/etc", "x\\y", ".hidden"])
def test_no_key_can_make_a_path_outside_the_export_folder(tmp_path, bad):
    with pytest.raises(ValueError, match="cannot be used"):
        export_path(tmp_path, "things", bad)


def test_hourly_keys_make_portable_file_names(tmp_path):
    assert export_path(tmp_path, "things", "2026-05-28-13:00.csv").name == "2026-05-28-1300.csv"
