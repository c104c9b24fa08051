"""Building an email from a delivery request: pure functions, no network.

Every value that ends up in a header is checked for CR/LF first (header injection), and the
recipient must look like a plain ``local@domain`` address; both are permanent failures.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from typing import Any

from herald.errors import PermanentError

# RFC 5321/5322 limits; the local part is the dot-atom form (quoted local parts are legal
# but unused in practice, and refusing them closes a class of parser confusion).
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_MAX_ADDRESS = 254
_MAX_LOCAL = 64


def message_id(delivery_id: str) -> str:
    """The Message-ID of a delivery's email: the delivery id makes re-sends recognisable."""
    return f"<{delivery_id}@herald>"


def refuse_header_injection(name: str, value: str) -> None:
    """PermanentError when ``value`` (bound for header ``name``) contains CR or LF."""
    if "\r" in value or "\n" in value:
        raise PermanentError(
            f"{name} contains a line break (header injection)",
            error_class="email.header_injection",
        )


def validate_address(address: str) -> str:
    """``address`` when it is a plain ``local@domain.tld`` address; PermanentError if not.

    ASCII only: internationalised addresses need SMTPUTF8, which not every relay offers.
    """
    refuse_header_injection("address", address)
    local, at, domain = address.rpartition("@")
    labels = domain.split(".")
    if not (
        at
        and len(address) <= _MAX_ADDRESS
        and 0 < len(local) <= _MAX_LOCAL
        and _LOCAL.fullmatch(local)
        and len(labels) >= 2
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    ):
        raise PermanentError(
            f"not a valid email address: {address!r}", error_class="email.invalid_address"
        )
    return address


def envelope_sender(from_header: str) -> str:
    """The bare address of a From header (``Herald <n@herald.local>`` → ``n@herald.local``)."""
    refuse_header_injection("From", from_header)
    return validate_address(parseaddr(from_header)[1])


def build_message(
    request: Mapping[str, Any], *, from_header: str, now: datetime | None = None
) -> EmailMessage:
    """The email for one ``herald.DeliveryRequest``: text, plus an HTML alternative if any.

    Raises PermanentError for header injection or an invalid recipient address.
    """
    to = validate_address(request["destination"])
    subject = request.get("subject") or ""
    refuse_header_injection("Subject", subject)
    refuse_header_injection("From", from_header)
    locale = request.get("locale") or "en"
    refuse_header_injection("Content-Language", locale)

    message = EmailMessage(policy=SMTP)  # CRLF line ends, as SMTP wants
    message["From"] = from_header
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = message_id(request["delivery_id"])
    # RFC 3834: tells auto-responders (vacation replies) not to answer a notification.
    message["Auto-Submitted"] = "auto-generated"
    message["Content-Language"] = locale
    message["X-Herald-Delivery-Id"] = request["delivery_id"]
    message.set_content(request["body_text"])
    if request.get("body_html"):
        message.add_alternative(request["body_html"], subtype="html")
    return message
