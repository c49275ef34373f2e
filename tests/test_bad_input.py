"""A bad night costs nothing: each kind of bad input fails with a message that says what to do,
or is recorded as a reject, and the outputs of the last good sync stay exactly as they were."""

import sqlite3
from contextlib import closing

import pytest
from conftest import FIRST_KEY, execute, materialize_range
from output_checks import (
    assert_outputs_match_source,
    partition_keys,
    snapshot,
    source_rows,
    sqlite_table,
)

from countysync_assets.resources.master_parcels_source import MasterParcelsSource


def failure_message(result) -> str:
    failures = result.get_step_failure_events()
    assert failures, "the run was expected to fail"
    error = failures[0].event_specific_data.error
    return "\n".join(filter(None, [error.message] + [c.message for c in _causes(error)]))


def _causes(error):
    while error.cause:
        error = error.cause
        yield error


@pytest.fixture
def synced(demo_url, tmp_path, instance):
    """A demo source already synced once: (source url, export dir, snapshot of outputs)."""
    exports = tmp_path / "exports"
    assert materialize_range(MasterParcelsSource(url=demo_url), exports, instance).success
    return demo_url, exports, snapshot(exports)


def test_unreachable_source_fails_clearly_and_keeps_outputs(synced, instance):
    _, exports, before = synced
    down = MasterParcelsSource(url="postgresql+psycopg://county:n0t-logged@127.0.0.1:1/master")
    result = materialize_range(down, exports, instance, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "Cannot read the master parcel database (host 127.0.0.1, database master" in message
    assert "n0t-logged" not in message
    assert snapshot(exports) == before


def test_missing_column_fails_clearly_and_keeps_outputs(synced, instance):
    url, exports, before = synced
    renamed = MasterParcelsSource(url=url, key_column="parcel_key")
    result = materialize_range(renamed, exports, instance, raise_on_error=False)
    message = failure_message(result)
    assert "Column 'parcel_key' is not in table 'MasterParcels'" in message
    assert "COUNTYSYNC_SOURCE_KEY_COLUMN" in message
    assert snapshot(exports) == before


def test_bad_geometry_is_rejected_or_repaired_and_the_rest_syncs(demo_url, tmp_path, instance):
    execute(demo_url, "UPDATE \"MasterParcels\" SET geometry = 'POLYGON((1 2, 3' WHERE id = 3")
    execute(demo_url, "UPDATE \"MasterParcels\" SET geometry = NULL WHERE id = 4")
    execute(demo_url, "UPDATE \"MasterParcels\" SET geometry = 'POINT (1950000 320000)' "
                      "WHERE id = 5")
    bowtie = "POLYGON ((1950000 320000, 1950100 320100, 1950100 320000, 1950000 320100, " \
             "1950000 320000))"
    execute(demo_url, f"UPDATE \"MasterParcels\" SET geometry = '{bowtie}' WHERE id = 6")
    exports = tmp_path / "exports"
    result = materialize_range(MasterParcelsSource(url=demo_url), exports, instance)
    assert result.success

    with closing(sqlite3.connect(exports / "rejects_db.sqlite")) as conn:
        rejects = dict(conn.execute("SELECT id, reason FROM geometry_rejects").fetchall())
    assert set(rejects) == {3, 4, 5}
    assert rejects[3].startswith("cannot parse geometry:")
    assert rejects[4] == "no geometry (NULL)"
    assert rejects[5] == "not a polygon (Point)"

    with closing(sqlite3.connect(exports / "geo_db.gpkg")) as conn:
        in_layer = {r[0] for r in conn.execute("SELECT id FROM parcels")}
    with closing(sqlite3.connect(exports / "working_db.sqlite")) as conn:
        in_working = {r[0] for r in conn.execute("SELECT id FROM working")}
    assert {3, 4, 5}.isdisjoint(in_layer) and 6 in in_layer  # the bowtie was repaired
    assert {3, 4, 5, 6} <= in_working  # attribute outputs keep every parcel
    geometry = result.asset_materializations_for_node("parcel_sync")
    metadata = {m.asset_key.path[-1]: m.metadata for m in geometry}["parcel_geometry"]
    assert metadata["rejected_rows"].value == 3
    assert metadata["repaired_geometries"].value == 1


def test_a_parcel_is_in_the_layer_or_in_the_rejects_as_its_latest_edit_decides(
        syncing, demo_url, tmp_path):
    """An edit that breaks a boundary takes the parcel out of the GeoPackage (its old shape
    would carry stale attributes) and lists it as a reject; an edit that fixes it puts it
    back and clears the reject. Each edit is synced by the change sensor, as in production."""
    exports = tmp_path / "exports"

    def layer_ids() -> set[int]:
        with closing(sqlite3.connect(exports / "geo_db.gpkg")) as conn:
            return {row[0] for row in conn.execute("SELECT id FROM parcels")}

    def rejects() -> dict[int, str]:
        table = sqlite_table(exports / "rejects_db.sqlite", "geometry_rejects")
        return dict(zip(table["id"], table["reason"], strict=True))

    assert syncing.catch_up()
    boundary = source_rows(demo_url).set_index("id").loc[11, "geometry"]
    edit = 'UPDATE "MasterParcels" SET geometry = :g, updated_at = :t WHERE id = 11'
    execute(demo_url, edit, g="POINT (1950000 320000)", t="2026-06-01 08:00:00.000001")
    assert syncing.catch_up()
    assert 11 not in layer_ids() and rejects() == {11: "not a polygon (Point)"}

    execute(demo_url, edit, g=boundary, t="2026-06-01 09:00:00.000002")
    assert syncing.catch_up()
    assert 11 in layer_ids() and rejects() == {}
    assert_outputs_match_source(demo_url, exports, partition_keys(FIRST_KEY, "2026-06-01"),
                                ["2026-06-01"])


def test_password_never_reaches_logs_metadata_or_files(pg_database_url, tmp_path, instance):
    from conftest import AS_OF

    from countysync_assets.demo_source import create_demo_source

    create_demo_source(pg_database_url, rows=300, seed=3, as_of=AS_OF, days=4)
    # trust auth ignores the password, so the run succeeds while carrying one
    with_password = pg_database_url.replace("postgres@", "postgres:Tr1cky-Secret@")
    exports = tmp_path / "exports"
    assert materialize_range(MasterParcelsSource(url=with_password), exports, instance).success
    logs = instance.all_logs(instance.get_runs()[0].run_id)
    assert logs and not [e for e in logs if "Tr1cky-Secret" in str(e)]
    for path in exports.rglob("*"):
        if path.is_file():
            assert b"Tr1cky-Secret" not in path.read_bytes(), path
