"""The export IO manager: formats per asset by configuration, written all or nothing."""

import sqlite3
from contextlib import closing

import pandas as pd
import pytest
from io_contexts import input_context, output_context
from test_geopackage_io_manager import METADATA as GEO_METADATA
from test_geopackage_io_manager import parcels

from countysync_assets.assets.asset_metadata import storage_metadata
from countysync_assets.io_managers.export_io_manager import (
    ExportIOManager,
    check_formats,
    parse_formats,
)
from countysync_assets.io_managers.format_io_manager import FORMATS, OutputTarget
from countysync_assets.partitions import PARTITIONS

GEO_BOTH = {**GEO_METADATA, FORMATS: ["gpkg", "geojson"]}
TABLE_METADATA = storage_metadata({"id": "integer: key", "name": "string: value",
                                   "updated_at": "timestamp: cursor"}, ["sqlite", "csv", "json"])


def table(name: str) -> pd.DataFrame:
    return pd.DataFrame({"id": [1], "name": [name], "updated_at": pd.to_datetime(
        ["2026-05-28 01:00"], utc=True)})


def sqlite_names(tmp_path) -> list[str]:
    with closing(sqlite3.connect(tmp_path / "things.sqlite")) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM things")]


def test_asset_goes_to_every_default_format(tmp_path):
    manager = ExportIOManager(export_dir=str(tmp_path))
    context = output_context(metadata=TABLE_METADATA)
    manager.handle_output(context, table("a"))
    assert sqlite_names(tmp_path) == ["a"]
    assert sorted(p.name for p in (tmp_path / "things").iterdir()) == ["2026-05-28.csv",
                                                                      "2026-05-28.json"]
    assert manager.load_input(input_context(metadata=TABLE_METADATA))["name"].tolist() == ["a"]


def test_configuration_overrides_the_formats_of_an_asset(tmp_path):
    manager = ExportIOManager(export_dir=str(tmp_path), formats={"things": ["csv"]})
    manager.handle_output(output_context(metadata=TABLE_METADATA), table("a"))
    assert not (tmp_path / "things.sqlite").exists()
    assert [p.name for p in (tmp_path / "things").iterdir()] == ["2026-05-28.csv"]
    with pytest.raises(TypeError, match="add 'sqlite'"):
        manager.load_input(input_context(metadata=TABLE_METADATA))


def test_a_failing_writer_leaves_every_output_as_it_was(tmp_path):
    manager = ExportIOManager(export_dir=str(tmp_path))
    manager.handle_output(output_context(metadata=TABLE_METADATA), table("a"))
    csv_before = (tmp_path / "things" / "2026-05-28.csv").read_bytes()
    # The JSON file's place is taken by a folder: the JSON writer cannot publish there.
    (tmp_path / "things" / "2026-05-28.json").unlink()
    (tmp_path / "things" / "2026-05-28.json").mkdir()
    with pytest.raises(OSError):
        manager.handle_output(output_context(metadata=TABLE_METADATA), table("b"))
    assert sqlite_names(tmp_path) == ["a"]
    assert (tmp_path / "things" / "2026-05-28.csv").read_bytes() == csv_before
    assert not [p for p in tmp_path.rglob(".*")], "staging files must be cleaned up"


def test_a_failing_geojson_writer_leaves_the_geopackage_as_it_was(tmp_path):
    manager = ExportIOManager(export_dir=str(tmp_path))
    manager.handle_output(output_context(metadata=GEO_BOTH),
                          parcels([(1, "a", "2026-05-28 01:00", 0)]))
    gpkg_before = (tmp_path / "geo_db.gpkg").read_bytes()
    (tmp_path / "things").rename(tmp_path / "moved")
    (tmp_path / "things").write_text("a file where the GeoJSON folder should be")
    with pytest.raises(OSError):
        manager.handle_output(output_context(metadata=GEO_BOTH),
                              parcels([(1, "b", "2026-05-28 02:00", 100)]))
    assert (tmp_path / "geo_db.gpkg").read_bytes() == gpkg_before
    assert not [p for p in tmp_path.rglob(".*")]


def test_outputs_finishing_side_by_side_publish_all_or_nothing(tmp_path):
    """Each database file's writers finish on a thread of their own: when the GeoPackage's
    merge fails there (its layer lost a column), the table merged beside it is not
    published either, no staging file stays, and no lock outlives the failure."""
    manager = ExportIOManager(export_dir=str(tmp_path))

    def publish(name: str, x: float) -> dict:
        outputs = manager.open_outputs(
            [OutputTarget(asset, metadata, "run", ["2026-05-28"], PARTITIONS)
             for asset, metadata in (("things", TABLE_METADATA), ("outlines", GEO_BOTH))])
        outputs.write("things", table(name))
        outputs.write("outlines", parcels([(1, name, "2026-05-28 01:00", x)]))
        return outputs.publish()

    publish("a", 0)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with closing(sqlite3.connect(tmp_path / "geo_db.gpkg")) as conn:
        conn.execute('ALTER TABLE parcels DROP COLUMN "name"')
    gpkg_before = (tmp_path / "geo_db.gpkg").read_bytes()
    with pytest.raises(ValueError, match="lacks column"):
        publish("b", 100)
    assert sqlite_names(tmp_path) == ["a"]
    assert (tmp_path / "geo_db.gpkg").read_bytes() == gpkg_before
    assert all(path.read_bytes() == content for path, content in before.items()
               if path.suffix in (".csv", ".json", ".geojson"))
    assert not [p for p in tmp_path.rglob(".*")], "staging files must be cleaned up"
    (tmp_path / "geo_db.gpkg").unlink()  # the county rebuilds the file, as the error says
    assert publish("c", 200)["things"]["sqlite_rows_updated"] == 1
    assert sqlite_names(tmp_path) == ["c"]


def test_formats_configuration_errors_name_the_problem():
    assert parse_formats('{"working": ["sqlite"]}') == {"working": ["sqlite"]}
    assert parse_formats("") == {}
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_formats("working=sqlite")
    with pytest.raises(ValueError, match="lists of formats"):
        parse_formats('{"working": "sqlite"}')
    with pytest.raises(ValueError, match="asset 'workng', which does not exist"):
        check_formats({"workng": ["csv"]}, {"working", "stats"})
    with pytest.raises(ValueError, match="one of sqlite, gpkg, csv, json, geojson"):
        check_formats({"working": ["xlsx"]}, {"working"})
