"""Schedules: deliberate default statuses, and the nightly sync takes the window that closed."""

from datetime import UTC, datetime

from dagster import DefaultScheduleStatus, DefaultSensorStatus, build_schedule_context

from countysync_assets.definitions import defs


def test_nightly_sync_takes_the_day_that_just_ended_and_starts_stopped():
    schedule = defs.resolve_schedule_def("nightly_sync_schedule")
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    context = build_schedule_context(
        scheduled_execution_time=datetime(2026, 6, 2, 0, 15, tzinfo=UTC),
        repository_def=defs.get_repository_def())
    requests = list(schedule.evaluate_tick(context).run_requests)
    assert [r.partition_key for r in requests] == ["2026-06-01"]


def test_nightly_delete_check_runs_by_default_on_the_reconcile_job():
    schedule = defs.resolve_schedule_def("nightly_delete_check")
    assert schedule.default_status == DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "reconcile_deletes"
    assert schedule.cron_schedule == "30 2 * * *"


def test_change_sensor_runs_by_default():
    sensor = defs.resolve_sensor_def("source_changes_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 60
