"""countysync's way: materialize the assets through Dagster on a real instance."""

from pathlib import Path

from dagster import DagsterInstance, materialize

from countysync_assets.definitions import all_assets
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.partitions import range_tags
from countysync_assets.resources.master_parcels_source import MasterParcelsSource


def run(step: str, workdir: Path, source_url: str, partitions: str) -> None:
    """Materialize every asset for ``partitions`` (``first...last``) in one run, on the
    instance in ``$DAGSTER_HOME`` (the case's own folder)."""
    first, last = partitions.split("...")
    result = materialize(
        all_assets,
        instance=DagsterInstance.get(),
        resources={"source": MasterParcelsSource(url=source_url),
                   "io_manager": ExportIOManager(export_dir=str(workdir / "exports"))},
        tags=range_tags(first, last),
    )
    assert result.success, f"countysync {step} failed"
