"""Settings of the email sender (environment prefix ``EMAIL_SENDER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from herald.sender import SenderSettings


class EmailSenderSettings(SenderSettings):
    """How the email sender batches, talks SMTP and reports."""

    model_config = SettingsConfigDict(env_prefix="EMAIL_SENDER_", extra="ignore")

    metrics_port: int = Field(default=9102, ge=0, le=65_535)
    #: Socket timeout of every SMTP command, connecting included.
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    #: A connection idle for longer is checked with NOOP before reuse (servers drop idle
    #: clients; finding out before MAIL FROM avoids failing a delivery for it).
    smtp_idle_check_seconds: float = Field(default=10.0, ge=0)
