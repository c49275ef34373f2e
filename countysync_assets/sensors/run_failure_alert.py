"""E-mails a person when a run fails: the job, its assets and partitions, the error's first
line and a link to the run in the UI.

RUNNING by default, deliberately: an alert that must be switched on is an alert that is
missing the night it is needed. Until an SMTP relay and recipients are set
(``COUNTYSYNC_SMTP_HOST``, ``COUNTYSYNC_ALERT_TO``) each failure is skipped with that reason in
the sensor's history. A relay that refuses fails the sensor's tick with the reason: an alert
is never lost silently.
"""

from dagster import (
    DagsterEventType,
    DagsterRun,
    DefaultSensorStatus,
    RunFailureSensorContext,
    SkipReason,
    run_failure_sensor,
)

from countysync_assets.resources.alert_mailer import AlertMailer
from countysync_assets.run_failures import first_reason

PARTITION_TAGS = ("dagster/partition", "dagster/asset_partition_range_start",
                  "dagster/asset_partition_range_end", "dagster/backfill")


def failure_message(context: RunFailureSensorContext, ui_url: str) -> tuple[str, str]:
    """The alert's subject and body."""
    run: DagsterRun = context.dagster_run
    failures = context.instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_FAILURE)
    if failures:
        event = failures[0].dagster_event
        reason = first_reason(event.step_failure_data.error)
        where = f"step {event.step_key}: "
    else:  # the run failed outside a step (configuration, a killed process)
        error = getattr(context.failure_event.event_specific_data, "error", None)
        reason = first_reason(error) if error else context.failure_event.message
        where = ""
    planned = context.instance.all_logs(run.run_id,
                                        of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    assets = ", ".join(sorted({e.dagster_event.asset_key.to_user_string() for e in planned})) \
        or "none"
    partitions = "; ".join(f"{tag.removeprefix('dagster/')}: {run.tags[tag]}"
                           for tag in PARTITION_TAGS if tag in run.tags) or "not partitioned"
    link = f"{ui_url.rstrip('/')}/runs/{run.run_id}"
    subject = f"[countysync] {run.job_name} failed: {reason}"[:200]
    body = "\n".join([
        f"The run {run.run_id} of {run.job_name} failed.", "",
        f"Error: {where}{reason}",
        f"Assets: {assets}",
        f"Partitions: {partitions}",
        f"Failed steps: {', '.join(e.dagster_event.step_key for e in failures) or 'none'}", "",
        f"Open the run: {link}",
        "A failed sync changes no output; once the cause is mended, re-execute the run from "
        "that page (or let the change sensor's next tick catch up)."])
    return subject, body


@run_failure_sensor(name="run_failure_alert", default_status=DefaultSensorStatus.RUNNING,
                    description="E-mails the failed job, assets, partitions and error, with a "
                                "link to the run (COUNTYSYNC_SMTP_*, COUNTYSYNC_ALERT_TO).")
def run_failure_alert(context: RunFailureSensorContext,
                      alert_mailer: AlertMailer) -> SkipReason | None:
    run = context.dagster_run
    if not alert_mailer.configured:
        return SkipReason(f"Run {run.run_id} of {run.job_name} failed; no e-mail was sent: set "
                          "COUNTYSYNC_SMTP_HOST and COUNTYSYNC_ALERT_TO to be alerted.")
    subject, body = failure_message(context, alert_mailer.ui_url)
    alert_mailer.send(subject, body)  # a refusal fails this tick with its reason
    context.log.info(f"E-mailed the failure of run {run.run_id} to "
                     f"{', '.join(alert_mailer.addresses())}.")
    return None
