"""Schedules.

``nightly_sync_schedule`` materializes the window that just closed, at 00:15 UTC. STOPPED by
default, deliberately: the change sensor already syncs every change within a minute, and two
triggers for the same windows would only double the runs. Turn it on in the UI (Automation)
for fixed-time syncs without the sensor.

``nightly_delete_check`` reconciles keys at 02:30 UTC. RUNNING by default: cursor syncs
cannot see deletes, so without it a retired parcel would stay in the GIS outputs.
"""

from datetime import timedelta

from dagster import (
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    schedule,
)

from countysync_assets.jobs import reconcile_deletes_job, sync_job
from countysync_assets.partitions import PARTITIONS

DAILY = isinstance(PARTITIONS, DailyPartitionsDefinition)


@schedule(
    name="nightly_sync_schedule",
    job=sync_job,
    cron_schedule="15 0 * * *" if DAILY else "15 * * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Sync the window that just closed, at 00:15 UTC (hourly partitions: at :15).",
)
def nightly_sync_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    # a quarter past the hour, the window that ended 15 minutes ago (not the one just opened)
    closed = context.scheduled_execution_time - timedelta(minutes=30)
    key = PARTITIONS.get_partition_key_for_timestamp(closed.timestamp())
    return RunRequest(run_key=f"scheduled:{key}", partition_key=key)


nightly_delete_check = ScheduleDefinition(
    name="nightly_delete_check",
    job=reconcile_deletes_job,
    cron_schedule="30 2 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Remove parcels deleted from the source from every output, nightly.",
)
