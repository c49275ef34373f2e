"""The bad-input corpus: real-world damage in a master table, each case on its own parcel.

One sync and one delete check of a source holding every case at once (a bad row must never
hold back the rest). Each case must end as an exact round trip through the outputs, a reject
with its reason (parcel_rejects, geometry_rejects or unplaced_parcels), never as a lost or
silently altered row; the outputs agree with each other, every source row is accounted for,
and a rerun changes nothing. The source is a copy of MasterParcels without its primary key,
so keys can be broken too.
"""

import json
import sqlite3
from contextlib import closing

import pandas as pd
import pyogrio
import pytest
import shapely
from conftest import AS_OF, execute, keyless_copy, materialize_range
from dagster import instance_for_test, materialize
from output_checks import snapshot, sqlite_table

from countysync_assets.definitions import all_assets
from countysync_assets.demo_source import create_demo_source
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.resources.master_parcels_source import EARLIEST_CURSOR, MasterParcelsSource
from countysync_assets.sensors.source_changes_sensor import newest_end

pytestmark = pytest.mark.faults
SQUARE = "POLYGON ((1950000 300000, 1950100 300000, 1950100 300100, 1950000 300100, " \
         "1950000 300000))"
LONG_TEXT = "LONG OWNER " * 10_000  # 110 kB
SET = 'UPDATE "copy" SET {} WHERE id = {}'

# (case, id, SQL, outcome, expected): outcome "published" expects (column, exact value) in
# every output; "rejected", "geometry" and "unplaced" expect a part of the reason.
CORPUS = [
    ("acres-negative", 101, SET.format("acres = -3.5", 101), "rejected", "acres -3.5 is negative"),
    ("acres-nan-text", 102, SET.format("acres = 'NaN'", 102), "rejected", "is not a number"),
    ("acres-word", 103, SET.format("acres = 'twelve'", 103), "rejected",
     "acres 'twelve' is not a number"),
    ("acres-minus-inf", 104, SET.format("acres = -9e999", 104), "rejected", "is infinite"),
    ("acres-plus-inf", 105, SET.format("acres = 9e999", 105), "rejected", "is infinite"),
    ("value-thousands-comma", 106, SET.format("assessed_value = '1,234'", 106), "rejected",
     "assessed_value '1,234' is not a number"),
    ("value-fraction", 107, SET.format("assessed_value = 1.5", 107), "rejected",
     "assessed_value 1.5 is not a whole number"),
    ("value-huge", 108, SET.format("assessed_value = 1e30", 108), "rejected",
     "too large for a 64-bit integer"),
    ("land-negative", 109, SET.format("land_value = -1", 109), "rejected",
     "land_value -1 is negative"),
    ("year-text", 110, SET.format("tax_year = 'abc'", 110), "rejected", "tax_year 'abc'"),
    ("parcel-id-null", 111, SET.format("parcel_id = NULL", 111), "rejected",
     "parcel_id is NULL"),
    ("id-text", 112, SET.format("id = 'abc'", 112), "rejected",
     "id 'abc' is not a number"),
    ("id-fraction", 113, SET.format("id = 113.5", 113), "rejected",
     "id 113.5 is not a whole number"),
    ("id-duplicate", 114, 'INSERT INTO "copy" SELECT * FROM "copy" WHERE id = 114', "rejected",
     "id 114 is shared by 2 rows"),
    ("id-null", 115, SET.format("id = NULL", 115), "unplaced", "no id (NULL)"),
    ("updated-null", 116, SET.format("updated_at = NULL", 116), "unplaced",
     "updated_at is NULL"),
    ("updated-2999", 117, SET.format("updated_at = '2999-01-01 00:00:00.000000'", 117),
     "unplaced", "'2999-01-01 00:00:00.000000' is not an edit time"),
    ("updated-9999", 118, SET.format("updated_at = '9999-12-31 23:59:59.999999'", 118),
     "unplaced", "is not an edit time"),
    ("updated-1960", 119, SET.format("updated_at = '1960-01-01 00:00:00.000000'", 119),
     "unplaced", "is not an edit time"),
    ("updated-garbage", 120, SET.format("updated_at = 'garbage'", 120), "unplaced",
     "'garbage' is not an edit time"),
    ("updated-epoch", 121, SET.format("updated_at = 1780000000", 121), "unplaced",
     "is not an edit time"),
    ("updated-with-offset", 122,
     SET.format("updated_at = substr(updated_at, 1, 19) || '+02:00'", 122), "rejected",
     "has a UTC offset"),
    ("owner-nul", 123, SET.format("owner = 'A' || char(0) || 'B'", 123), "rejected",
     "owner contains a NUL character"),
    ("owner-bad-utf8", 124, SET.format("owner = CAST(x'4142ff43' AS TEXT)", 124), "rejected",
     "owner b'AB\\xffC' is not valid UTF-8"),
    ("owner-unicode", 125, SET.format("owner = 'Ñandú Öztürk 北京 😀'", 125), "published",
     ("owner", "Ñandú Öztürk 北京 😀")),
    ("owner-control-chars", 126, SET.format("owner = 'A' || char(9) || 'B' || char(10) || "
                                            "'C' || char(13) || char(7)", 126), "published",
     ("owner", "A\tB\nC\r\x07")),
    ("owner-csv-injection", 127, SET.format("owner = '=HYPERLINK(\"http://x\",\"y\")'", 127),
     "published", ("owner", '=HYPERLINK("http://x","y")')),
    ("owner-100kb", 128, SET.format(f"owner = '{LONG_TEXT}'", 128), "published",
     ("owner", LONG_TEXT)),
    ("owner-null", 129, SET.format("owner = NULL", 129), "published", ("owner", None)),
    ("address-quotes-commas", 130, SET.format("situs_address = '1 \"A\" St, Apt 2; ''B'''",
                                              130), "published",
     ("situs_address", "1 \"A\" St, Apt 2; 'B'")),
    ("use-code-number", 131, SET.format("use_code = 11", 131), "published", ("use_code", "11")),
    ("acres-null", 132, SET.format("acres = NULL", 132), "published", ("acres", None)),
    ("year-whole-float", 133, SET.format("tax_year = 2026.0", 133), "published",
     ("tax_year", 2026)),
    ("owner-leading-spaces", 134, SET.format("owner = '  SMITH  '", 134), "published",
     ("owner", "  SMITH  ")),
    ("geometry-null", 135, SET.format("geometry = NULL", 135), "geometry",
     "no geometry (NULL)"),
    ("geometry-unparseable", 136, SET.format("geometry = 'POLYGON((1 2, 3'", 136), "geometry",
     "cannot parse geometry"),
    ("geometry-point", 137, SET.format("geometry = 'POINT (1950000 300000)'", 137),
     "geometry", "not a polygon (Point)"),
    ("geometry-empty", 138, SET.format("geometry = 'POLYGON EMPTY'", 138), "geometry",
     "empty geometry"),
    ("geometry-nan-coordinate", 139, SET.format(
        "geometry = 'POLYGON ((1950000 300000, nan 300000, 1950100 300100, 1950000 300000))'",
        139), "geometry", "a coordinate is NaN or infinite"),
    ("geometry-lon-lat", 140, SET.format(
        "geometry = 'POLYGON ((-119.2 46.2, -119.19 46.2, -119.19 46.21, -119.2 46.2))'",
        140), "geometry", "lies outside the area EPSG:2286 covers"),
    ("geometry-collapsed", 141, SET.format(
        "geometry = 'POLYGON ((1950000 300000, 1950100 300000, 1950050 300000, "
        "1950000 300000))'", 141),
     "geometry", "reduces to no area"),
    ("geometry-bowtie-repaired", 142, SET.format(
        "geometry = 'POLYGON ((1950000 300000, 1950100 300100, 1950100 300000, "
        "1950000 300100, 1950000 300000))'", 142), "published", ("area", 5000.0)),
    ("geometry-3d-made-2d", 143, SET.format(
        "geometry = 'POLYGON Z ((1950000 300000 5, 1950100 300000 5, 1950100 300100 5, "
        "1950000 300100 5, 1950000 300000 5))'", 143), "published", ("area", 10000.0)),
    ("geometry-wkb-among-wkt", 144, SET.format(
        f"geometry = x'{shapely.from_wkt(SQUARE).wkb_hex}'", 144), "published",
     ("area", 10000.0)),
    ("geometry-bad-wkb", 145, SET.format("geometry = x'0103000000'", 145), "geometry",
     "cannot parse geometry"),
    ("geometry-multipolygon", 146, SET.format(
        f"geometry = 'MULTIPOLYGON ((({SQUARE[10:-2]})))'", 146), "published",
     ("area", 10000.0)),
]

# how parcel_rejects lists a key the source holds as text or a fraction
REJECT_KEY = {112: "abc", 113: "113.5"}
REMOVED = [i for _c, i, _s, outcome, _e in CORPUS if outcome in ("rejected", "unplaced")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus source synced once, then the delete check: (url, exports, instance, run)."""
    root = tmp_path_factory.mktemp("corpus")
    url = f"sqlite:///{root / 'source.sqlite'}"
    create_demo_source(url, rows=600, seed=11, as_of=AS_OF, days=4)
    keyless_copy(url)
    for _case, _id, statement, _outcome, _expected in CORPUS:
        execute(url, statement)
    source = MasterParcelsSource(url=url, table="copy", srid=2286)
    exports = root / "exports"
    with instance_for_test() as instance:
        # with the optional raw mirror (raw_db.sqlite), which must agree with the rest
        run = materialize_range(source, exports, instance, formats={"master_parcels": ["sqlite"]})
        yield url, exports, source, instance, run


def in_outputs(exports, row_id: int) -> dict[str, bool]:
    found = {}
    for db, table in (("raw_db.sqlite", "master_parcels"), ("working_db.sqlite", "working"),
                      ("stats_db.sqlite", "stats")):
        with closing(sqlite3.connect(exports / db)) as conn:
            found[table] = conn.execute(f'SELECT 1 FROM "{table}" WHERE id = ?',
                                        (row_id,)).fetchone() is not None
    with closing(sqlite3.connect(exports / "geo_db.gpkg")) as conn:
        found["gpkg"] = conn.execute("SELECT 1 FROM parcels WHERE id = ?",
                                     (row_id,)).fetchone() is not None
    return found


def window_files(exports, row_id: int) -> dict:
    """The change-file records of ``row_id``: working CSV and JSON, GeoJSON feature."""
    records = {}
    for path in sorted((exports / "working").glob("*.json")):
        for record in json.loads(path.read_text()):
            if record["id"] == row_id:
                records["json"] = record
                csv = pd.read_csv(path.with_suffix(".csv"), dtype=str, keep_default_na=False)
                records["csv"] = csv[csv["id"] == str(row_id)].iloc[0].to_dict()
    for path in sorted((exports / "parcel_geometry").glob("*.geojson")):
        for feature in json.loads(path.read_text())["features"]:
            if feature["properties"]["id"] == row_id:
                records["geojson"] = feature
    return records


@pytest.mark.parametrize(("case", "row_id", "outcome", "expected"),
                         [(c, i, o, e) for c, i, _s, o, e in CORPUS],
                         ids=[c for c, *_ in CORPUS])
def test_each_case_is_published_exactly_or_rejected_with_its_reason(corpus, case, row_id,
                                                                    outcome, expected):
    _url, exports, *_ = corpus
    found = in_outputs(exports, row_id)
    rejects = sqlite_table(exports / "rejects_db.sqlite", "parcel_rejects")
    geometry_rejects = sqlite_table(exports / "rejects_db.sqlite", "geometry_rejects")
    if outcome == "rejected":
        key = REJECT_KEY.get(row_id, str(row_id))
        reasons = rejects.loc[rejects["id"] == key, "reason"].tolist()
        assert reasons and expected in reasons[0], (case, reasons)
        assert not any(found.values()), f"{case}: a rejected row must leave every output"
    elif outcome == "unplaced":
        unplaced = sqlite_table(exports / "rejects_db.sqlite", "unplaced_parcels",
                                order_by="reason")
        matching = unplaced[unplaced["reason"].str.contains(expected, regex=False)]
        assert len(matching), (case, unplaced["reason"].tolist())
        assert not any(found.values())
    elif outcome == "geometry":
        reason = geometry_rejects.loc[geometry_rejects["id"] == row_id, "reason"].tolist()
        assert reason and expected in reason[0], (case, reason)
        assert found == {"master_parcels": True, "working": True, "stats": True,
                         "gpkg": False}
    else:
        assert all(found.values()), (case, found)
        column, value = expected
        if column == "area":
            layer = pyogrio.read_dataframe(exports / "geo_db.gpkg", where=f"id = {row_id}")
            assert not layer.geometry.has_z.any()
            assert layer.geometry.area.iloc[0] == pytest.approx(value)
            return
        db, table = ("stats_db.sqlite", "stats") if column in ("acres", "tax_year") else \
            ("working_db.sqlite", "working")
        with closing(sqlite3.connect(exports / db)) as conn:
            stored = conn.execute(f'SELECT "{column}" FROM "{table}" WHERE id = ?',
                                  (row_id,)).fetchone()[0]
        assert stored == value
        if table == "working":
            files = window_files(exports, row_id)
            assert files["json"][column] == value
            assert files["csv"][column] == ("" if value is None else value)
            assert files["geojson"]["properties"][column] == value
            layer = pyogrio.read_dataframe(exports / "geo_db.gpkg", where=f"id = {row_id}")
            assert (None if pd.isna(layer[column].iloc[0]) else layer[column].iloc[0]) == value


def test_every_source_row_is_accounted_for_and_the_outputs_agree(corpus):
    url, exports, *_ = corpus
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        source = conn.exec_driver_sql('SELECT CAST(id AS TEXT), parcel_id FROM "copy"').all()
    engine.dispose()
    raw = set(sqlite_table(exports / "raw_db.sqlite", "master_parcels")["id"])
    working = set(sqlite_table(exports / "working_db.sqlite", "working")["id"])
    stats = set(sqlite_table(exports / "stats_db.sqlite", "stats")["id"])
    layer = set(pyogrio.read_dataframe(exports / "geo_db.gpkg", read_geometry=False)["id"])
    geometry_rejects = set(sqlite_table(exports / "rejects_db.sqlite", "geometry_rejects")["id"])
    assert raw == working == stats, "the outputs must hold the same parcels"
    assert layer | geometry_rejects == working and not layer & geometry_rejects
    rejects = set(sqlite_table(exports / "rejects_db.sqlite", "parcel_rejects")["id"])
    unplaced = sqlite_table(exports / "rejects_db.sqlite", "unplaced_parcels", "reason")
    keyed = {row_id for row_id, _ in source if row_id is not None}
    assert keyed == {str(i) for i in raw} | rejects | set(unplaced["id"].dropna())
    assert sum(row_id is None for row_id, _ in source) == unplaced["id"].isna().sum() == 1
    assert len(raw) == 600 - len(REMOVED), "every other parcel was published"


def test_the_sensor_counts_exactly_the_unplaced_rows(corpus):
    """The change sensor counts the rows no window can hold on every tick (by ranges of the
    cursor's index, NULL keys and cursors apart): the same rows the delete check lists."""
    *_, source, _instance, _run = corpus
    unplaced = sum(outcome == "unplaced" for *_, outcome, _e in CORPUS)
    assert source.count_unplaced(newest_end()) == unplaced == sum(
        len(rows) for rows in source.iter_unplaced(newest_end()))
    # the reconciliation's counts (rows with a key, and those a window holds), taken by
    # subtracting these ranges, equal the census of every key
    census = source.key_census(EARLIEST_CURSOR, newest_end())
    assert source.key_counts(newest_end()) == (len(census), int(census["inside"].sum()))


def test_counts_are_in_the_run_metadata(corpus, reliability):
    *_, run = corpus
    metadata = {e.asset_key.path[-1]: e.materialization.metadata
                for e in run.get_asset_materialization_events()}
    rejected = sum(outcome == "rejected" for *_, outcome, _e in CORPUS)
    unplaced = sum(outcome == "unplaced" for *_, outcome, _e in CORPUS)
    # the duplicated id is two source rows, both rejected (one row of the table: one id)
    # a range run: the figures are the run's (run_rows), not one window's (dagster/row_count)
    assert metadata["parcel_rejects"]["run_rows"].value == rejected + 1
    assert metadata["unplaced_parcels"]["dagster/row_count"].value == unplaced
    assert metadata["parcel_geometry"]["z_dropped"].value == 1
    outcomes = pd.Series([outcome for *_, outcome, _e in CORPUS]).value_counts()
    reliability(suite="bad input", case="corpus of source defects", trials=len(CORPUS),
                outcome=", ".join(f"{n} {kind}" for kind, n in outcomes.items()),
                lost_or_extra_rows=0)


def test_a_rerun_changes_nothing(corpus):
    _url, exports, source, instance, _run = corpus
    before = snapshot(exports)
    assert materialize_range(source, exports, instance).success
    assert materialize(all_assets, selection=["deleted_parcels", "unplaced_parcels"],
                       instance=instance,
                       resources={"source": source,
                                  "io_manager": ExportIOManager(export_dir=str(exports))}
                       ).success
    assert snapshot(exports) == before
