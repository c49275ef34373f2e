"""countysync's way, through Dagster on a real instance (the case's ``$DAGSTER_HOME``).

full, incremental, incremental-1000: the change sensor's ticks and the runs they request
until it asks for nothing more (a change set above its row limit comes as bounded range runs,
one per tick).
delete-check: the nightly job that removes the parcels the churn deleted (a cursor never sees
a delete). backfill, backfill-rerun: one single-run backfill of the sync job over the range.
"""

import os
from pathlib import Path

from dagster import DagsterInstance

from countysync_assets.io_managers.export_io_manager import parse_formats
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors.in_process import InProcessSync


def run(step: str, workdir: Path, source_url: str, partitions: str) -> None:
    cursor_file = workdir / "sensor_cursor.json"  # there when the workdir was fully synced
    cursor = cursor_file.read_text() if cursor_file.exists() else None
    sync = InProcessSync(MasterParcelsSource(url=source_url), workdir / "exports",
                         DagsterInstance.get(), cursor,
                         formats=parse_formats(os.environ.get("COUNTYSYNC_FORMATS")))
    if step == "delete-check":
        assert sync.reconcile(), "countysync delete check failed"
    elif step == "full" or step.startswith("incremental"):
        assert sync.catch_up(), f"countysync {step} failed"
        cursor_file.write_text(sync.cursor)
    else:
        assert sync.sync_range(*partitions.split("...")), f"countysync {step} failed"
