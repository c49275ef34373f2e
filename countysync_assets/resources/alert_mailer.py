"""E-mail through the county's SMTP relay, for alerts a person must see.

County relays are often plain, no-login relays on port 25: ``tls="none"`` with no user works.
``starttls`` (port 587) and ``ssl`` (port 465) are there for relays that need them, with a
login when ``user`` is set. The password comes from the environment as an ``EnvVar`` and is
never put in a message, a log line or an error.
"""

import smtplib
import ssl
from email.message import EmailMessage
from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field


class AlertError(RuntimeError):
    """An alert could not be sent; the message says where it went wrong and what to check."""


class AlertMailer(ConfigurableResource):
    """The SMTP relay and who gets the alerts."""

    host: str | None = Field(default=None, description="SMTP relay; unset: no e-mail is sent")
    port: int = Field(default=25, gt=0, lt=65536)
    tls: Literal["none", "starttls", "ssl"] = "none"
    user: str | None = None
    password: str | None = None
    sender: str = "countysync@localhost"
    recipients: str = Field(default="", description="comma-separated addresses")
    ui_url: str = Field(default="http://127.0.0.1:3000",
                        description="the Dagster UI's address, for links in the alerts")
    timeout_seconds: float = Field(default=30, gt=0)

    def addresses(self) -> list[str]:
        return [a.strip() for a in self.recipients.split(",") if a.strip()]

    @property
    def configured(self) -> bool:
        return bool(self.host and self.addresses())

    def send(self, subject: str, body: str) -> None:
        """Send one message to every recipient, or raise ``AlertError`` in one line."""
        message = EmailMessage()
        message["Subject"], message["From"] = subject, self.sender
        message["To"] = ", ".join(self.addresses())
        message.set_content(body)
        connect = smtplib.SMTP_SSL if self.tls == "ssl" else smtplib.SMTP
        try:
            with connect(self.host, self.port, timeout=self.timeout_seconds) as smtp:
                if self.tls == "starttls":
                    smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, self.password or "")
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if self.password:
                reason = reason.replace(self.password, "***")
            raise AlertError(
                f"The alert e-mail could not be sent through {self.host}:{self.port} "
                f"(TLS {self.tls}): {reason}. Check COUNTYSYNC_SMTP_HOST, COUNTYSYNC_SMTP_PORT, "
                "COUNTYSYNC_SMTP_TLS, COUNTYSYNC_SMTP_USER and COUNTYSYNC_SMTP_PASSWORD.") from None
