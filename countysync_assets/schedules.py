"""The nightly schedule: materializes the window that just closed, at 00:15 UTC.

STOPPED by default, deliberately: the change sensor already syncs every change within a
minute, and two triggers for the same windows would only double the runs. Turn it on in the
UI (Automation -> nightly_sync_schedule) for fixed-time syncs without the sensor.
"""

from dagster import (
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    build_schedule_from_partitioned_job,
)

from countysync_assets.jobs import sync_job
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
