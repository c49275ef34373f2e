"""The merge rule, as a property: whatever the order of batches, however often each is rerun,
the current-state stores end with the latest version of every row (hypothesis)."""

import sqlite3
from contextlib import closing

import pandas as pd
import pyogrio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from io_contexts import output_context
from test_geopackage_io_manager import METADATA as GEO_METADATA
from test_geopackage_io_manager import parcels

from countysync_assets.io_managers.geopackage_io_manager import GeoPackageIOManager
from countysync_assets.io_managers.sqlite_io_manager import SQLiteIOManager

# A version of a row: (id, microseconds after 2026-05-28 00:00). Its value follows from both.
versions = st.tuples(st.integers(1, 6), st.integers(0, 86_399_999_999))
batches = st.lists(st.lists(versions, min_size=1, max_size=6), min_size=1, max_size=8)


def stamp(micros: int) -> str:
    return str(pd.Timestamp("2026-05-28") + pd.Timedelta(microseconds=micros))


def latest(applied: list[list[tuple[int, int]]]) -> dict[int, str]:
    newest: dict[int, int] = {}
    for batch in applied:
        for row_id, micros in batch:
            newest[row_id] = max(micros, newest.get(row_id, -1))
    return {row_id: f"v{row_id}-{micros}" for row_id, micros in newest.items()}


def one_version_per_id(batch: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A source extract holds one version of each row: keep the newest in the batch."""
    return sorted({row_id: max(m for i, m in batch if i == row_id) for row_id, _ in batch}
                  .items())


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches, order=st.randoms())
def test_sqlite_keeps_the_latest_version_in_any_order(tmp_path_factory, batches, order):
    manager = SQLiteIOManager(export_dir=str(tmp_path_factory.mktemp("merge")))
    applied = [one_version_per_id(b) for b in batches]
    replayed = applied + order.sample(applied, k=len(applied))  # every batch, then reruns
    order.shuffle(replayed)
    for batch in replayed:
        frame = pd.DataFrame({"id": [i for i, _ in batch],
                              "name": [f"v{i}-{m}" for i, m in batch],
                              "updated_at": pd.to_datetime([stamp(m) for _, m in batch],
                                                           format="ISO8601",
                                                           utc=True)})
        manager.handle_output(output_context(), frame)
    with closing(sqlite3.connect(manager.db_path(output_context()))) as conn:
        stored = dict(conn.execute("SELECT id, name FROM things").fetchall())
    assert stored == latest(applied)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches, order=st.randoms())
def test_geopackage_keeps_the_latest_version_in_any_order(tmp_path_factory, batches, order):
    """The same at GeoPackage's millisecond precision (one version per id per millisecond)."""
    folder = tmp_path_factory.mktemp("merge_gpkg")
    manager = GeoPackageIOManager(export_dir=str(folder))
    applied = [one_version_per_id([(i, m - m % 1000) for i, m in b]) for b in batches]
    replayed = applied + order.sample(applied, k=len(applied))
    order.shuffle(replayed)
    for batch in replayed:
        rows = [(i, f"v{i}-{m}", stamp(m), float(i * 1000)) for i, m in batch]
        manager.handle_output(output_context(metadata=GEO_METADATA), parcels(rows))
    layer = pyogrio.read_dataframe(folder / "geo_db.gpkg", layer="parcels")
    assert dict(zip(layer["id"], layer["name"], strict=True)) == latest(applied)
