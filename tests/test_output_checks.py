"""The checks on the published parcels: they pass after a sync, and fail, naming the parcels,
when an output no longer agrees (a row removed from one file, a parcel number blanked by hand
in a desktop tool)."""

import sqlite3
from contextlib import closing

from conftest import materialize_range
from dagster import AssetSelection, materialize

from countysync_assets.assets import output_checks
from countysync_assets.definitions import all_assets
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.resources.master_parcels_source import MasterParcelsSource

CHECKS = [output_checks.published_parcels_checks]


def run_checks(url, exports, instance) -> dict:
    result = materialize([*all_assets, *CHECKS], instance=instance,
                         selection=AssetSelection.checks_for_assets("working"),
                         resources={"source": MasterParcelsSource(url=url),
                                    "io_manager": ExportIOManager(export_dir=str(exports))},
                         raise_on_error=False)
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_checks_pass_after_a_sync_and_name_the_parcels_when_outputs_disagree(
        demo_url, tmp_path, instance):
    exports = tmp_path / "exports"
    assert materialize_range(MasterParcelsSource(url=demo_url), exports, instance).success
    checks = run_checks(demo_url, exports, instance)
    assert checks["outputs_agree"].passed and checks["parcel_id_present"].passed
    assert checks["outputs_agree"].metadata["parcels"].value == 2_000

    with closing(sqlite3.connect(exports / "stats_db.sqlite")) as conn, conn:
        gone = conn.execute("SELECT min(id) FROM stats").fetchone()[0]
        conn.execute("DELETE FROM stats WHERE id = ?", (gone,))
    with closing(sqlite3.connect(exports / "working_db.sqlite")) as conn, conn:
        blank = conn.execute("SELECT max(id) FROM working").fetchone()[0]
        conn.execute("UPDATE working SET parcel_id = NULL WHERE id = ?", (blank,))
    checks = run_checks(demo_url, exports, instance)
    agree, numbered = checks["outputs_agree"], checks["parcel_id_present"]
    assert not agree.passed and agree.metadata["in_working_or_stats_only"].value == 1
    assert agree.metadata["sample_ids_working_vs_stats"].value == str(gone)
    assert not numbered.passed and numbered.metadata["sample_ids"].value == str(blank)
