"""Schedules.

``nightly_sync_schedule`` materializes the window that just closed, at 00:15 UTC. STOPPED by
default, deliberately: the change sensor already syncs every change within a minute, and two
triggers for the same windows would only double the runs. Turn it on in the UI (Automation)
for fixed-time syncs without the sensor.

``nightly_delete_check`` reconciles keys at 02:30 UTC. RUNNING by default: cursor syncs
cannot see deletes, so without it a retired parcel would stay in the GIS outputs.
"""

from dagster import (
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    ScheduleDefinition,
    build_schedule_from_partitioned_job,
)

from countysync_assets.jobs import reconcile_deletes_job, sync_job
from countysync_assets.partitions import PARTITIONS

nightly_sync_schedule = build_schedule_from_partitioned_job(
    sync_job,
    name="nightly_sync_schedule",
    minute_of_hour=15,
    # daily partitions: 00:15 UTC; hourly partitions: a quarter past every hour
    hour_of_day=0 if isinstance(PARTITIONS, DailyPartitionsDefinition) else None,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Sync the window that just closed, at 00:15 UTC (hourly: at :15).",
)

nightly_delete_check = ScheduleDefinition(
    name="nightly_delete_check",
    job=reconcile_deletes_job,
    cron_schedule="30 2 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Remove parcels deleted from the source from every output, nightly.",
)
