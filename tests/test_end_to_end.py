"""A county's whole sync, through Dagster on a real instance, from each kind of real source:
every output is checked against the source row by row, and a rerun must change nothing."""

from pathlib import Path

from conftest import AS_OF, FIRST_KEY, LAST_KEY, materialize_range
from dagster import AssetKey
from output_checks import assert_outputs_match_source, partition_keys, snapshot

from countysync_assets.demo_source import create_demo_source
from countysync_assets.resources.master_parcels_source import MasterParcelsSource

KEYS = partition_keys(FIRST_KEY, LAST_KEY)


def materialization_metadata(instance, asset: str) -> list[dict]:
    """Metadata of the asset's materializations, newest first (one per partition)."""
    records = instance.fetch_materializations(AssetKey(asset), limit=1000).records
    return [r.event_log_entry.asset_materialization.metadata for r in records]


def test_sqlite_source_every_output_matches_and_rerun_changes_nothing(demo_url, tmp_path,
                                                                        instance):
    exports = tmp_path / "exports"
    source = MasterParcelsSource(url=demo_url, batch_size=300)  # several keyset pages
    result = materialize_range(source, exports, instance)
    assert result.success
    assert_outputs_match_source(demo_url, exports, KEYS)
    # what the run wrote, as the UI shows it: the first rows as a table, no geometry bytes
    for asset in ("working", "parcel_geometry"):
        table = materialization_metadata(instance, asset)[0]["preview"]
        columns = [column.name for column in table.schema.columns]
        assert len(table.records) == 5 and "parcel_id" in columns and "geometry" not in columns
        for record in table.records:
            assert set(record.data) == set(columns)
            assert not any(isinstance(v, bytes) or str(v).startswith("b'")
                           for v in record.data.values())
        assert all(isinstance(record.data["parcel_id"], str) for record in table.records)

    before = snapshot(exports)
    assert materialize_range(source, exports, instance).success
    assert snapshot(exports) == before
    rerun = materialization_metadata(instance, "working")[0]
    assert rerun["sqlite_rows_updated"].value == 0
    assert rerun["sqlite_rows_inserted"].value == 0


def test_postgres_source_gives_the_same_outputs(pg_database_url, tmp_path: Path, instance):
    create_demo_source(pg_database_url, rows=1_500, seed=11, as_of=AS_OF, days=4)
    exports = tmp_path / "exports"
    result = materialize_range(MasterParcelsSource(url=pg_database_url, batch_size=400),
                               exports, instance)
    assert result.success
    assert_outputs_match_source(pg_database_url, exports, KEYS)
    assert "postgresql+psycopg" in materialization_metadata(
        instance, "master_parcels")[0]["source"].value
