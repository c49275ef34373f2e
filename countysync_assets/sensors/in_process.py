"""The change sensor and the runs it requests, evaluated in this process as the daemon would:
for tests, the benchmark, and scripts that sync without a running daemon."""

from pathlib import Path

from dagster import DagsterInstance, Definitions, SensorResult, build_sensor_context
from dagster._core.storage.tags import RUN_KEY_TAG

from countysync_assets.definitions import all_assets, all_checks
from countysync_assets.io_managers.export_io_manager import ExportIOManager
from countysync_assets.jobs import reconcile_deletes_job, sync_job
from countysync_assets.partitions import range_tags
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors.source_changes_sensor import source_changes_sensor


class InProcessSync:
    """One source, one export folder, one Dagster instance; the cursor kept in ``cursor``."""

    def __init__(self, source: MasterParcelsSource, exports: Path, instance: DagsterInstance,
                 cursor: str | None = None, formats: dict[str, list[str]] | None = None):
        self.source, self.instance, self.cursor = source, instance, cursor
        self.launched: set[str] = set()  # run keys already run: the daemon skips them too
        self.io_manager = ExportIOManager(export_dir=str(exports), formats=formats or {})
        self.defs = Definitions(
            # the checks too: a sync here costs what it costs deployed
            assets=all_assets, asset_checks=all_checks, jobs=[sync_job, reconcile_deletes_job],
            sensors=[source_changes_sensor],
            resources={"source": source, "io_manager": self.io_manager})

    def tick(self) -> SensorResult:
        """One evaluation of the change sensor; its cursor is kept for the next."""
        context = build_sensor_context(instance=self.instance, cursor=self.cursor,
                                       resources={"source": self.source,
                                                  "io_manager": self.io_manager},
                                       definitions=self.defs)
        result = source_changes_sensor(context)
        self.cursor = result.cursor
        return result

    def run(self, result: SensorResult, raise_on_error: bool = True) -> list[bool]:
        """Execute each requested run (with its run key, as the daemon tags it), except those
        whose run key has run before (the daemon skips them too)."""
        outcomes = []
        for request in result.run_requests:
            if request.run_key in self.launched:
                continue
            self.launched.add(request.run_key)
            job = self.defs.resolve_job_def(request.job_name or sync_job.name)
            outcomes.append(job.execute_in_process(
                instance=self.instance, partition_key=request.partition_key,
                tags={**request.tags, RUN_KEY_TAG: request.run_key},
                raise_on_error=raise_on_error).success)
        return outcomes

    def catch_up(self) -> bool:
        """Tick and run until the sensor asks for nothing new (a huge change set comes as one
        bounded run per tick); False as soon as a run fails."""
        while (result := self.tick()).run_requests:
            outcomes = self.run(result)
            if not all(outcomes):
                return False
            if not outcomes:  # only run keys already run: nothing left to do
                return True
        return True

    def sync_range(self, first: str, last: str) -> bool:
        """One run of the sync job over partitions first..last, as a single-run backfill of
        that job does (the delete check is its own job, as it is in the UI)."""
        return self.defs.resolve_job_def("sync_parcels").execute_in_process(
            instance=self.instance, tags=range_tags(first, last)).success

    def reconcile(self) -> bool:
        """The nightly delete check."""
        return self.defs.resolve_job_def("reconcile_deletes").execute_in_process(
            instance=self.instance).success
