"""The run-failure alert e-mails a person through a real SMTP server on loopback (aiosmtpd,
a plain no-login relay as county relays often are); a wrong relay setting fails the sensor's
tick loudly, never silently."""

import socket
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
from conftest import materialize_range
from dagster import DagsterEventType, SkipReason, build_run_status_sensor_context

from countysync_assets.resources.alert_mailer import AlertError, AlertMailer
from countysync_assets.resources.master_parcels_source import MasterParcelsSource
from countysync_assets.sensors.run_failure_alert import run_failure_alert


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's hook name
        message = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((envelope.rcpt_tos, message))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, inbox
    controller.stop()


@pytest.fixture
def failed_run(demo_url, tmp_path, instance):
    """A real failed sync run: the source table is misnamed."""
    result = materialize_range(MasterParcelsSource(url=demo_url, table="MasterParcel"),
                               tmp_path / "exports", instance, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)[0]
    return run, failure.dagster_event


def evaluate(instance, failed_run, mailer):
    run, event = failed_run
    context = build_run_status_sensor_context(
        sensor_name="run_failure_alert", dagster_instance=instance, dagster_run=run,
        dagster_event=event, resources={"alert_mailer": mailer})
    return run_failure_alert(context.for_run_failure())


def test_a_failed_run_is_emailed_with_its_error_and_link(smtp, instance, failed_run):
    port, inbox = smtp
    mailer = AlertMailer(host="127.0.0.1", port=port,
                         recipients="gis@county.example, it@county.example", ui_url="http://dagster.county.example:3000/")
    assert evaluate(instance, failed_run, mailer) is None
    (to, message), = inbox.messages
    run, _ = failed_run
    body = message.get_content()
    assert to == ["gis@county.example", "it@county.example"]
    assert message["Subject"].startswith(f"[countysync] {run.job_name} failed: ")
    assert "MasterParcel" in message["Subject"]  # the error's own first line, not a wrapper
    assert f"http://dagster.county.example:3000/runs/{run.run_id}" in body
    assert "master_parcels" in body and "2026-05-28" in body and "2026-05-31" in body
    assert "Error occurred while executing" not in body and "Traceback" not in body


def test_without_a_relay_the_failure_is_skipped_with_the_reason(instance, failed_run):
    result = evaluate(instance, failed_run, AlertMailer())
    assert isinstance(result, SkipReason) and "COUNTYSYNC_SMTP_HOST" in result.skip_message


def test_a_wrong_relay_fails_loudly_without_the_password(instance, failed_run):
    mailer = AlertMailer(host="127.0.0.1", port=free_port(), recipients="gis@county.example",
                         user="alerts", password="S3cret-pw", timeout_seconds=5)
    with pytest.raises(AlertError, match=r"could not be sent through 127\.0\.0\.1:\d+ \(TLS "
                                         r"none\): .*Check COUNTYSYNC_SMTP_HOST") as error:
        evaluate(instance, failed_run, mailer)
    assert "S3cret-pw" not in str(error.value)
