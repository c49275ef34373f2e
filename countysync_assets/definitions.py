"""The countysync code location: assets, resources and the sync job.

Configuration comes from the environment and ``.env`` (see README, "Configuration").
"""

import os

from dagster import (
    Definitions,
    EnvVar,
    ExecutorDefinition,
    in_process_executor,
    load_asset_checks_from_modules,
    load_assets_from_modules,
)

from countysync_assets import assets
from countysync_assets.appraisal.records import BLOCK_BYTES
from countysync_assets.assets import appraisal, output_checks
from countysync_assets.assets.sync_status_map import status_map_follows_syncs
from countysync_assets.assets.use_code_summary import summary_follows_deletes
from countysync_assets.io_managers.export_io_manager import (
    PARALLEL_ROWS,
    ExportIOManager,
    check_formats,
    parse_formats,
)
from countysync_assets.jobs import reconcile_deletes_job, sync_job
from countysync_assets.memory import freeze_loaded_objects
from countysync_assets.resources.alert_mailer import AlertMailer
from countysync_assets.resources.appraisal_release import (
    AppraisalDatabase,
    AppraisalRelease,
)
from countysync_assets.resources.district_config import PACKAGED_DISTRICTS
from countysync_assets.resources.release_downloader import ReleaseDownloader
from countysync_assets.resources.source_config import source_from_env, whole_number
from countysync_assets.schedules import nightly_delete_check, nightly_sync_schedule
from countysync_assets.sensors.appraisal_release_sensor import (
    appraisal_job,
    appraisal_release_sensor,
)
from countysync_assets.sensors.run_failure_alert import run_failure_alert
from countysync_assets.sensors.source_changes_sensor import source_changes_sensor

all_assets = load_assets_from_modules([assets])
all_checks = load_asset_checks_from_modules([output_checks])
appraisal_assets = load_assets_from_modules([appraisal])


def export_io_manager_from_env() -> ExportIOManager:
    """The export IO manager with ``COUNTYSYNC_EXPORT_DIR`` and ``COUNTYSYNC_FORMATS``."""
    formats = parse_formats(os.environ.get("COUNTYSYNC_FORMATS"))
    check_formats(formats, {key.path[-1] for a in all_assets for key in a.keys})
    return ExportIOManager(export_dir=os.environ.get("COUNTYSYNC_EXPORT_DIR") or "exports",
                           formats=formats,
                           lock_wait_seconds=whole_number("COUNTYSYNC_LOCK_WAIT_SECONDS", 120),
                           parallel_rows=whole_number("COUNTYSYNC_PARALLEL_ROWS", PARALLEL_ROWS))


def appraisal_resources_from_env(district_file: str | None = None) -> dict:
    """The appraisal pipeline's resources, from ``COUNTYSYNC_APPRAISAL_*`` (README);
    ``district_file`` overrides ``COUNTYSYNC_APPRAISAL_DISTRICT``."""
    database = os.environ.get("COUNTYSYNC_APPRAISAL_DB_URL")
    return {
        "appraisal_release": AppraisalRelease(
            district_file=district_file or os.environ.get("COUNTYSYNC_APPRAISAL_DISTRICT")
            or str(PACKAGED_DISTRICTS / "hcad.yaml"),
            work_dir=os.environ.get("COUNTYSYNC_APPRAISAL_DIR") or "data/appraisal",
            block_bytes=whole_number("COUNTYSYNC_APPRAISAL_BLOCK_BYTES", BLOCK_BYTES)),
        "appraisal_db": AppraisalDatabase(
            url=EnvVar("COUNTYSYNC_APPRAISAL_DB_URL") if database else None,
            export_dir=os.environ.get("COUNTYSYNC_EXPORT_DIR") or "exports"),
        "downloader": ReleaseDownloader(
            bandwidth_limit=whole_number("COUNTYSYNC_DOWNLOAD_BYTES_PER_SECOND", 0)),
    }


def executor_from_env() -> ExecutorDefinition:
    """Where a run's steps execute: in the run's own process, or, with
    ``COUNTYSYNC_CELERY_BROKER`` set, as Celery tasks that ``dagster-celery worker`` processes
    on this or other machines pick up (README, "Scaling out"). The broker and backend URLs
    are read as environment variables when a run starts, so a password in them is never
    stored with the run."""
    if not os.environ.get("COUNTYSYNC_CELERY_BROKER"):
        # A sync's steps form a chain (parcel_sync -> use_code_summary; the delete check ->
        # use_code_summary): a process per step would add seconds of start-up and run
        # nothing side by side, so a run executes its steps in its own process.
        return in_process_executor
    from dagster_celery import celery_executor  # Celery's import: only where it is chosen

    config: dict = {"broker": {"env": "COUNTYSYNC_CELERY_BROKER"},
                    # workers started with -q <queue> take countysync's steps, no one else's
                    "config_source": {"task_default_queue":
                                      os.environ.get("COUNTYSYNC_CELERY_QUEUE") or "countysync"}}
    if os.environ.get("COUNTYSYNC_CELERY_BACKEND"):
        config["backend"] = {"env": "COUNTYSYNC_CELERY_BACKEND"}
    return celery_executor.configured(config, name="countysync_celery_executor")


def alert_mailer_from_env() -> AlertMailer:
    """The SMTP relay and recipients of the alerts, from ``COUNTYSYNC_SMTP_*`` and
    ``COUNTYSYNC_ALERT_*`` (README); strings as ``EnvVar``, so the password never shows."""
    strings = {"host": "COUNTYSYNC_SMTP_HOST", "user": "COUNTYSYNC_SMTP_USER",
               "password": "COUNTYSYNC_SMTP_PASSWORD",
               "sender": "COUNTYSYNC_ALERT_FROM", "recipients": "COUNTYSYNC_ALERT_TO",
               "ui_url": "COUNTYSYNC_UI_URL"}
    settings: dict = {field: EnvVar(variable) for field, variable in strings.items()
                      if os.environ.get(variable)}
    if os.environ.get("COUNTYSYNC_SMTP_PORT"):
        settings["port"] = whole_number("COUNTYSYNC_SMTP_PORT")
    if tls := os.environ.get("COUNTYSYNC_SMTP_TLS"):  # a choice, not a secret: checked now
        if tls not in ("none", "starttls", "ssl"):
            raise ValueError(f"COUNTYSYNC_SMTP_TLS={tls!r} is not one of none, starttls, ssl.")
        settings["tls"] = tls
    return AlertMailer(**settings)


defs = Definitions(
    assets=[*all_assets, *appraisal_assets],
    asset_checks=all_checks,
    jobs=[sync_job, reconcile_deletes_job, appraisal_job],
    sensors=[source_changes_sensor, appraisal_release_sensor, run_failure_alert,
             summary_follows_deletes, status_map_follows_syncs],
    schedules=[nightly_sync_schedule, nightly_delete_check],
    resources={"source": source_from_env(), "io_manager": export_io_manager_from_env(),
               "alert_mailer": alert_mailer_from_env(), **appraisal_resources_from_env()},
    executor=executor_from_env(),
)
freeze_loaded_objects()  # the code location is loaded: what it holds lives as long as it
