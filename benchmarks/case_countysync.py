"""countysync's way, through Dagster on a real instance (the case's ``$DAGSTER_HOME``).

full, incremental: the change sensor's ticks and the runs they request until it asks for
nothing more (a change set above its row limit comes as bounded range runs, one per tick).
delete-check: the nightly job that removes the parcels the churn deleted (a cursor never sees
a delete). backfill, backfill-rerun: one single-run backfill of the range.
"""

from pathlib import Path

from dagster import DagsterInstance, materialize

from countysync_assets.definitions import all_assets
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.partitions import range_tags
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors.in_process import InProcessSync


def run(step: str, workdir: Path, source_url: str, partitions: str) -> None:
    source = MasterParcelsSource(url=source_url)
    exports, cursor_file = workdir / "exports", workdir / "sensor_cursor.json"
    if step in ("full", "incremental", "delete-check"):
        cursor = cursor_file.read_text() if step != "full" else None
        sync = InProcessSync(source, exports, DagsterInstance.get(), cursor)
        if step == "delete-check":
            assert sync.reconcile(), "countysync delete check failed"
            return
        assert sync.catch_up(), f"countysync {step} failed"
        cursor_file.write_text(sync.cursor)
        return
    first, last = partitions.split("...")
    result = materialize(all_assets, instance=DagsterInstance.get(), tags=range_tags(first, last),
                         resources={"source": source,
                                    "io_manager": ExportIOManager(export_dir=str(exports))})
    assert result.success, f"countysync {step} failed"
