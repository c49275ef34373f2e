"""The source resource against real databases (SQLite files, the local PostgreSQL server).

SQL Server cannot run on these machines. Its path is tested by compiling the statements with
SQLAlchemy's mssql dialect (the reflected table is stood in for by the demo schema, the one
part that needs a live server), by a real pyodbc + FreeTDS connection attempt to a port
where nothing listens, and by reading pyodbc's own rows (what its driver returns) through
SQLite's ODBC driver.
"""

import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa
from conftest import AS_OF, execute, keyless_copy, skip_or_fail_in_ci
from dagster import TimeWindow
from sqlalchemy.dialects import mssql

from countysync_assets.assets.asset_metadata import PARCEL_COLUMNS
from countysync_assets.assets.master_parcels import checked_batches
from countysync_assets.demo_source import create_demo_source, parcels_table
from countysync_assets.resources.master_parcels_source import (
    EARLIEST_CURSOR,
    SRID_COLUMN,
    MasterParcelsSource,
    SourceError,
    _census_batch,
    _rows_frame,
)

WINDOW = (AS_OF - timedelta(days=4), AS_OF)


def extract(source: MasterParcelsSource, start=WINDOW[0], end=WINDOW[1]) -> pd.DataFrame:
    return pd.concat(list(source.iter_changed_batches(start, end)), ignore_index=True)


def source_ids(url: str, start: datetime, end: datetime) -> list[int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        ids = conn.execute(sa.text(
            'SELECT id FROM "MasterParcels" WHERE updated_at >= :s AND updated_at < :e'),
            {"s": start.replace(tzinfo=None), "e": end.replace(tzinfo=None)}).scalars().all()
    engine.dispose()
    return sorted(ids)


@pytest.mark.parametrize("batch_size", [1, 7, 50_000])
def test_extract_returns_each_changed_row_once_whatever_the_batch_size(demo_url, batch_size):
    start, end = AS_OF - timedelta(days=2, hours=5), AS_OF - timedelta(days=1, hours=22)
    frame = extract(MasterParcelsSource(url=demo_url, batch_size=batch_size), start, end)
    assert frame["id"].tolist() == sorted(frame["id"].tolist(), key=lambda i: (
        frame.set_index("id").loc[i, "updated_at"], i))
    assert sorted(frame["id"]) == source_ids(demo_url, start, end)
    assert frame["updated_at"].between(start, end, inclusive="left").all()
    assert str(frame["updated_at"].dtype) == "datetime64[us, UTC]"
    assert (frame[SRID_COLUMN] == 2286).all()


def test_rows_sharing_one_time_across_pages_are_each_read_once(demo_url):
    """A mass update stamps every row it touches with one time: more of them than a page
    holds are paged through by key, none read twice, none skipped."""
    start, end = AS_OF - timedelta(days=2), AS_OF - timedelta(days=1)
    execute(demo_url, 'UPDATE "MasterParcels" SET updated_at = :t WHERE id IN '
            '(SELECT id FROM "MasterParcels" ORDER BY id LIMIT 10)',
            t=(start + timedelta(hours=3)).strftime("%Y-%m-%d %H:%M:%S.%f"))
    frame = extract(MasterParcelsSource(url=demo_url, batch_size=3), start, end)
    assert frame["id"].is_unique
    assert sorted(frame["id"]) == source_ids(demo_url, start, end)
    assert (frame["updated_at"] == start + timedelta(hours=3)).sum() == 10


def test_a_sync_reads_only_the_columns_its_outputs_hold(demo_url):
    """A county's master table carries columns no output holds (legal descriptions, deed
    references): the sync's pages leave them in the database; the resource's own reads of
    every column still see them."""
    execute(demo_url, 'ALTER TABLE "MasterParcels" ADD COLUMN legal_description TEXT')
    execute(demo_url, 'UPDATE "MasterParcels" SET legal_description = :text',
            text="LOT 7 BLOCK 3 OF THE PLAT OF " * 2_000)
    source = MasterParcelsSource(url=demo_url, batch_size=500)
    checked = list(checked_batches(source, TimeWindow(*WINDOW)))
    good = pd.concat([batch for batch, _ in checked])
    assert "legal_description" not in good
    assert set(PARCEL_COLUMNS) <= set(good.columns)
    assert len(good) + sum(len(rejects) for _, rejects in checked) == len(
        source_ids(demo_url, *WINDOW)) > 0
    assert "legal_description" in extract(source)


def test_outlines_are_read_only_when_an_output_holds_them(demo_url):
    """Tables only (no GeoPackage, GeoJSON or raw mirror): the pages leave the geometry in
    the database; the same rows come either way."""
    source = MasterParcelsSource(url=demo_url, batch_size=500)
    window = TimeWindow(*WINDOW)
    with_outlines = pd.concat([good for good, _ in checked_batches(source, window)])
    tables_only = pd.concat([good for good, _ in checked_batches(source, window,
                                                                 outlines=False)])
    assert {"geometry", SRID_COLUMN} <= set(with_outlines.columns)
    assert not {"geometry", SRID_COLUMN} & set(tables_only.columns)
    pd.testing.assert_frame_equal(tables_only, with_outlines[tables_only.columns])
    assert with_outlines["geometry"].notna().all() and len(tables_only) > 0


def test_rows_by_key_leave_the_outlines_in_the_database_when_asked(demo_url):
    """The reconciliation asks only whether keys still exist: key and cursor, no outline."""
    source = MasterParcelsSource(url=demo_url)
    keys = [*source_ids(demo_url, *WINDOW)[:5], -1]  # -1: no such parcel
    drawn = source.rows_with_keys(keys, columns=["parcel_id"])
    known = source.rows_with_keys(keys, columns=[], outlines=False)
    assert {"geometry", SRID_COLUMN, "parcel_id"} <= set(drawn.columns)
    assert set(known.columns) == {"id", "updated_at"}
    assert sorted(known["id"]) == sorted(drawn["id"]) == keys[:5]


def as_sqlalchemy_reads(url: str, ids: list[int], columns: list[str]) -> list[list]:
    engine = sa.create_engine(url)
    table = sa.Table("MasterParcels", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        rows = {row.id: row._mapping for row in conn.execute(sa.select(table))}
    engine.dispose()
    return [[rows[i][c] for c in columns] for i in ids]


def test_pages_hold_the_values_sqlalchemy_reads_with_or_without_types_to_convert(demo_url):
    """Pages take the driver's rows as they are where SQLAlchemy converts nothing (the
    faster way) and SQLAlchemy's where a column's type converts values (SQLite's DATE, read
    as a date): either way the values are those SQLAlchemy reads."""
    columns = ["parcel_id", "owner", "acres", "assessed_value", "geometry"]

    def check(columns: list[str]) -> pd.DataFrame:
        frame = extract(MasterParcelsSource(url=demo_url, batch_size=500))
        assert frame[columns].astype(object).where(frame[columns].notna(), None) \
            .values.tolist() == as_sqlalchemy_reads(demo_url, frame["id"].tolist(), columns)
        return frame

    check(columns)
    execute(demo_url, 'ALTER TABLE "MasterParcels" ADD COLUMN deed_date DATE')
    execute(demo_url, "UPDATE \"MasterParcels\" SET deed_date = '2026-05-01' WHERE id % 2 = 0")
    frame = check([*columns, "deed_date"])
    assert set(frame["deed_date"].dropna()) == {date(2026, 5, 1)}
    assert frame["deed_date"].isna().any()


def test_rows_sharing_a_timestamp_across_a_batch_boundary_are_not_lost(demo_url):
    tie = datetime(2026, 5, 30, 12, 0, 0, 123456)
    execute(demo_url, 'UPDATE "MasterParcels" SET updated_at = :t WHERE id <= 25', t=tie)
    frame = extract(MasterParcelsSource(url=demo_url, batch_size=10))
    tied = frame[frame["updated_at"] == pd.Timestamp(tie, tz="UTC")]
    assert sorted(tied["id"]) == list(range(1, 26))
    assert frame["id"].is_unique


def test_postgres_extract_matches_sqlite(pg_database_url, demo_url):
    create_demo_source(pg_database_url, rows=2_000, seed=7, as_of=AS_OF, days=4)
    from_pg = extract(MasterParcelsSource(url=pg_database_url, batch_size=333))
    from_sqlite = extract(MasterParcelsSource(url=demo_url))
    pd.testing.assert_frame_equal(from_pg, from_sqlite, check_dtype=False)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_key_census_lists_every_key_and_which_fall_in_the_range(database, demo_url, request):
    """What the reconciliation check reads: every key once, flagged where its row's cursor
    is in the range (read in several batches)."""
    url = demo_url
    if database == "postgresql":
        url = request.getfixturevalue("pg_database_url")
        create_demo_source(url, rows=2_000, seed=7, as_of=AS_OF, days=4)
    start, end = AS_OF - timedelta(days=2, hours=5), AS_OF - timedelta(days=1, hours=22)
    census = MasterParcelsSource(url=url, batch_size=333).key_census(start, end)
    assert census["id"].is_unique
    assert sorted(census["id"]) == source_ids(url, datetime(1900, 1, 1, tzinfo=UTC), AS_OF
                                              + timedelta(days=1))
    assert sorted(census.loc[census["inside"], "id"]) == source_ids(url, start, end)
    assert 0 < census["inside"].sum() < len(census)
    inside = MasterParcelsSource(url=url, batch_size=333).key_census(start, end, only_inside=True)
    assert sorted(inside["id"]) == source_ids(url, start, end) and inside["inside"].all()
    # the census up to the end counted by the database (after every sync)
    up_to_end = MasterParcelsSource(url=url).key_census(EARLIEST_CURSOR, end)
    assert MasterParcelsSource(url=url).key_counts(end) == (
        len(up_to_end), int(up_to_end["inside"].sum())) and up_to_end["inside"].sum() < len(census)


def test_naive_timestamps_are_read_in_the_source_time_zone(demo_url):
    pacific = MasterParcelsSource(url=demo_url, source_timezone="America/Los_Angeles")
    utc_rows = extract(MasterParcelsSource(url=demo_url), *WINDOW)
    shifted = extract(pacific, WINDOW[0] + timedelta(hours=7), WINDOW[1] + timedelta(hours=7))
    assert sorted(shifted["id"]) == sorted(utc_rows["id"])  # PDT is UTC-7 in May
    merged = shifted.merge(utc_rows, on="id")
    assert ((merged["updated_at_x"] - merged["updated_at_y"]) == timedelta(hours=7)).all()
    with pytest.raises(SourceError, match="not a time zone name"):
        extract(MasterParcelsSource(url=demo_url, source_timezone="Pacific Time"))


def test_missing_table_names_it_and_lists_what_exists(tmp_path):
    url = f"sqlite:///{tmp_path / 'other.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE parcels_2026 (id INTEGER)")
    with pytest.raises(SourceError, match=r"'MasterParcels' was not found.*parcels_2026"):
        extract(MasterParcelsSource(url=url))


def test_missing_column_names_it_and_lists_the_columns(demo_url):
    with pytest.raises(SourceError) as error:
        extract(MasterParcelsSource(url=demo_url, cursor_column="last_edited"))
    message = str(error.value)
    assert "'last_edited' is not in table 'MasterParcels'" in message
    assert "updated_at" in message and "COUNTYSYNC_SOURCE_CURSOR_COLUMN" in message


def test_rows_without_a_key_are_left_to_key_reconciliation(demo_url):
    """A NULL key cannot be paged past or merged: the window extract passes over it (the
    rest of the window still syncs) and ``iter_unplaced`` lists it."""
    table = keyless_copy(demo_url)
    execute(demo_url, f'UPDATE "{table}" SET id = NULL WHERE id = 5')
    source = MasterParcelsSource(url=demo_url, table=table, srid=2286)
    assert len(extract(source)) == 1_999
    unplaced = pd.concat(source.iter_unplaced(datetime(2027, 1, 1, tzinfo=UTC)))
    assert unplaced["id"].tolist() == [None] and len(unplaced["parcel_id"].iloc[0]) > 0


def test_srid_comes_from_config_or_geometry_columns(demo_url):
    assert MasterParcelsSource(url=demo_url).resolve_srid() == 2286
    assert MasterParcelsSource(url=demo_url, srid=2927).resolve_srid() == 2927
    execute(demo_url, "DELETE FROM geometry_columns")
    with pytest.raises(SourceError, match="COUNTYSYNC_SOURCE_SRID"):
        MasterParcelsSource(url=demo_url).resolve_srid()


def test_without_configuration_the_missing_demo_source_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="countysync demo-source"):
        MasterParcelsSource(demo_path=str(tmp_path / "none.sqlite")).get_engine()


def test_unreachable_postgres_names_host_and_database_never_the_password():
    source = MasterParcelsSource(
        url="postgresql+psycopg://county:Sup3r-Secret@127.0.0.1:1/parcels")
    with pytest.raises(SourceError) as error:
        extract(source)
    message = str(error.value)
    assert "host 127.0.0.1, database parcels" in message
    assert "Sup3r-Secret" not in message and "***" in message
    assert "No output was changed" in message


# --- SQL Server --------------------------------------------------------------------------

def sql_server(**settings) -> MasterParcelsSource:
    defaults = {"host": "gis-sql.county.local", "database": "Assessor", "user": "countysync",
                "password": "Pa55-w0rd!", "srid": 2286}
    return MasterParcelsSource(**{**defaults, **settings})


def compiled_page(source: MasterParcelsSource, after=None) -> str:
    """The T-SQL of one keyset page. No SQL Server can run here, so the reflected table is
    stood in for by the demo's schema (the same table definition a county's would reflect)."""
    source._table = parcels_table(sa.MetaData())
    query = source.changed_rows_query(*WINDOW, after=after)
    return str(query.compile(dialect=mssql.dialect()))


def test_sql_server_url_from_parts_masks_the_password():
    source = sql_server(trust_server_certificate=True)
    url = source.sqlalchemy_url()
    assert url.drivername == "mssql+pyodbc"
    assert url.query == {"driver": "ODBC Driver 18 for SQL Server", "Encrypt": "yes",
                         "TrustServerCertificate": "yes"}
    assert "Pa55-w0rd!" not in source.display_url() and "***" in source.display_url()
    engine = source.get_engine()  # creating the engine does not connect
    assert engine.dialect.name == "mssql" and engine.dialect.fast_executemany


def test_sql_server_page_reads_geometry_as_wkb_with_srid_and_binds_values():
    sql = compiled_page(sql_server())
    assert "[MasterParcels].geometry.STAsBinary() AS geometry" in sql
    assert "[MasterParcels].geometry.STSrid AS geometry_srid" in sql
    assert sql.startswith("SELECT TOP __[POSTCOMPILE_param_1]")
    assert "ORDER BY [MasterParcels].updated_at, [MasterParcels].id" in sql
    assert "OFFSET" not in sql and "FETCH" not in sql
    assert "updated_at >= :updated_at_1 AND [MasterParcels].updated_at < :updated_at_2" in sql


def test_sql_server_page_names_only_the_columns_asked_for():
    source = sql_server()
    source._table = parcels_table(sa.MetaData())  # stands in for the reflected table

    def selected(outlines: bool) -> str:
        return str(source.changed_rows_query(*WINDOW, columns=["parcel_id"], outlines=outlines)
                   .compile(dialect=mssql.dialect())).split(" FROM ")[0]

    with_outlines = selected(outlines=True)
    assert "[MasterParcels].parcel_id" in with_outlines and "owner" not in with_outlines
    assert "[MasterParcels].id" in with_outlines and "STAsBinary() AS geometry" in with_outlines
    assert ".STSrid AS geometry_srid" in with_outlines and "updated_at" in with_outlines
    tables_only = selected(outlines=False)
    assert "STAsBinary" not in tables_only and "STSrid" not in tables_only
    assert "[MasterParcels].id" in tables_only and "updated_at" in tables_only


def test_sql_server_key_census_flags_rows_with_a_case_and_binds_the_range():
    source = sql_server()
    source._table = parcels_table(sa.MetaData())  # stands in for the reflected table
    sql = str(source.key_census_query(*WINDOW).compile(dialect=mssql.dialect()))
    assert sql.startswith("SELECT [MasterParcels].id, CASE WHEN ([MasterParcels].updated_at >= "
                          ":updated_at_1 AND [MasterParcels].updated_at < :updated_at_2) THEN")
    assert sql.endswith("WHERE [MasterParcels].id IS NOT NULL")
    assert "2026" not in sql
    inside = str(source.key_census_query(*WINDOW, only_inside=True).compile(
        dialect=mssql.dialect()))
    assert inside.endswith("WHERE [MasterParcels].id IS NOT NULL AND [MasterParcels].updated_at "
                           ">= :updated_at_1 AND [MasterParcels].updated_at < :updated_at_2")


def test_sql_server_unplaced_count_is_ranges_of_the_cursor_index():
    """The sensor's count of rows no window can hold, on every tick: disjoint index ranges of
    the cursor, not one OR that scans the table (the demo's key is NOT NULL; its cursor too)."""
    source = sql_server()
    source._table = parcels_table(sa.MetaData())  # stands in for the reflected table
    sql = str(source.unplaced_count_query(WINDOW[1]).compile(dialect=mssql.dialect()))
    assert sql.count("SELECT count(*)") == 2 and " OR " not in sql and "2026" not in sql
    assert "WHERE [MasterParcels].updated_at < :updated_at_1) + (SELECT count(*)" in sql
    assert sql.endswith("WHERE [MasterParcels].updated_at >= :updated_at_2) AS anon_1")


def test_sql_server_key_counts_are_ranges_of_the_cursor_index():
    """The reconciliation's counts after every sync: the table's rows less the unplaced ones,
    each counted on the cursor's index, not a flag computed for every row."""
    source = sql_server()
    source._table = parcels_table(sa.MetaData())  # stands in for the reflected table
    sql = str(source.key_counts_query(WINDOW[1]).compile(dialect=mssql.dialect()))
    assert "CASE" not in sql and " OR " not in sql and "2026" not in sql
    assert sql.count("SELECT count(*)") == 3  # the rows (once) and the two unplaced ranges
    assert "WHERE [MasterParcels].updated_at < :updated_at_1" in sql
    assert "WHERE [MasterParcels].updated_at >= :updated_at_2" in sql


def test_sql_server_keyset_predicate_is_bound():
    """A later page seeks from the last row read: its one lower bound on the cursor is that
    row's (with the window's start as well, a database may seek from the start and step over
    every row already read, which grows with the square of the table)."""
    sql = compiled_page(sql_server(), after=("2026-05-30T10:11:12.1234567", 17))
    assert ("[MasterParcels].updated_at >= CAST(:param_2 AS DATETIME) AND ([MasterParcels]"
            ".updated_at > CAST(:param_2 AS DATETIME) OR [MasterParcels].id > :id_1)") in sql
    assert sql.count("updated_at >=") == 1 and "[MasterParcels].updated_at < :updated_at_1" in sql
    assert "17" not in sql and "2026" not in sql


def test_sql_server_page_starts_after_the_last_rows_exact_time():
    """pyodbc cuts datetime2's 100 ns ticks to microseconds: a next page bounded by the cut
    value would read the last row again, and a mass update (every row it touched stamped with
    one time) longer than a page would be read forever. Each page reads its rows' cursor as
    text as well, and the next page starts after that exact value, cast back to the column's
    own type (a county's datetime2 here, as reflection would give it)."""
    source = sql_server()
    source._table = parcels_table(sa.MetaData())  # stands in for the reflected table
    source._table.c.updated_at.type = mssql.DATETIME2(precision=7)
    last = "2026-05-30T10:11:12.1234567"
    query = source.changed_rows_query(*WINDOW, after=(last, 17))
    compiled = query.compile(dialect=mssql.dialect())
    assert "convert(varchar(34), [MasterParcels].updated_at, 126) AS page_cursor" in str(compiled)
    assert ("[MasterParcels].updated_at >= CAST(:param_2 AS DATETIME2(7)) AND ([MasterParcels]"
            ".updated_at > CAST(:param_2 AS DATETIME2(7)) OR [MasterParcels].id > :id_1)"
            ) in str(compiled)
    assert compiled.params["param_2"] == last and compiled.params["id_1"] == 17


def test_sql_server_unreachable_through_freetds_is_a_clear_error():
    import pyodbc

    if "FreeTDS" not in pyodbc.drivers():
        skip_or_fail_in_ci("the FreeTDS ODBC driver (Debian package tdsodbc) is not installed")
    source = sql_server(port=1, host="127.0.0.1", odbc_driver="FreeTDS", srid=None)
    with pytest.raises(SourceError) as error:
        source.table_ref()
    message = str(error.value)
    assert "host 127.0.0.1, database Assessor" in message
    assert "Pa55-w0rd!" not in message
    assert "ODBC driver" in message


def odbc_rows(path: str, query: str) -> list:
    """What pyodbc, SQL Server's driver, returns for ``query``: its own ``Row`` objects, not
    tuples. SQL Server cannot run here; SQLite's ODBC driver gives real pyodbc rows of a real
    file."""
    import pyodbc

    if "SQLite3" not in pyodbc.drivers():
        skip_or_fail_in_ci("SQLite's ODBC driver (Debian package libsqliteodbc) is not installed")
    with closing(pyodbc.connect(f"DRIVER={{SQLite3}};Database={path}")) as odbc:
        rows = odbc.execute(query).fetchall()
    assert rows and not isinstance(rows[0], tuple)  # pyodbc.Row
    return rows


def sqlite3_rows(path: str, query: str) -> list[tuple]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(query).fetchall()


def test_a_page_of_pyodbc_rows_becomes_the_frame_tuples_make(demo_url):
    """A source page read through the driver's own cursor (no SQLAlchemy rows) is a frame of
    every column whatever the driver's row type (pandas' constructor took each pyodbc row
    for one value: a one-column frame, and an error)."""
    path = demo_url.removeprefix("sqlite:///")
    columns = ["id", "parcel_id", "owner", "acres", "assessed_value"]
    query = f'SELECT {", ".join(columns)} FROM "MasterParcels" ORDER BY id'
    frame = _rows_frame(odbc_rows(path, query), columns)
    pd.testing.assert_frame_equal(frame, _rows_frame(sqlite3_rows(path, query), columns))
    assert len(frame) == 2_000 and frame["parcel_id"].notna().all()


@pytest.mark.parametrize("key", ["id", "parcel_id"])  # a county may key on parcel numbers
def test_a_census_of_pyodbc_rows_lists_the_keys_tuples_list(demo_url, key):
    """The reconciliation's key census takes pyodbc's rows as it takes sqlite3's tuples, for
    whole-number keys (one numpy array) and text ones (the frame of the rows)."""
    path = demo_url.removeprefix("sqlite:///")
    query = (f'SELECT {key}, CASE WHEN id % 3 = 0 THEN 1 ELSE 0 END FROM "MasterParcels" '
             "ORDER BY id")
    census, tuples = _census_batch(odbc_rows(path, query)), sqlite3_rows(path, query)
    pd.testing.assert_frame_equal(census, _census_batch(tuples))
    keys = pd.Series([row[0] for row in tuples], name="id")
    pd.testing.assert_series_equal(census["id"], keys, check_dtype=False)
    assert set(census["inside"]) == {0, 1}


def test_repeated_hour_at_the_end_of_dst_does_not_stop_the_sync(demo_url):
    execute(demo_url, 'UPDATE "MasterParcels" SET updated_at = :t WHERE id = 1',
            t="2026-11-01 01:30:00.000000")  # happens twice in Los Angeles that night
    pacific = MasterParcelsSource(url=demo_url, source_timezone="America/Los_Angeles")
    start = datetime(2026, 11, 1, 8, tzinfo=UTC)
    frame = extract(pacific, start, start + timedelta(hours=2))
    assert frame["id"].tolist() == [1]
    assert frame["updated_at"].iloc[0] == pd.Timestamp("2026-11-01 08:30", tz="UTC")  # PDT


def test_a_misspelt_sqlite_source_is_named_and_no_file_is_created(tmp_path, demo_url):
    misspelt = tmp_path / "demo_sorce.sqlite"
    with pytest.raises(SourceError, match=f"The SQLite source {misspelt} does not exist"):
        MasterParcelsSource(url=f"sqlite:///{misspelt}").count_all()
    assert not misspelt.exists()


def test_a_sqlite_source_is_opened_read_only(demo_url):
    source = MasterParcelsSource(url=demo_url)
    assert source.count_all() == 2_000
    with pytest.raises(sa.exc.OperationalError, match="readonly"), \
            source.get_engine().begin() as conn:
        conn.execute(sa.text('DELETE FROM "MasterParcels"'))
    assert source.count_all() == 2_000
