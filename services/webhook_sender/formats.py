"""What is POSTed for a delivery, per endpoint kind: pure functions, no network.

- ``webhook``: a Standard Webhooks payload, ``{"type", "timestamp", "data"}``. The body is the
  same on every retry and replay of a delivery (the timestamp is when the notification was
  created), so only the signature headers change between attempts.
- ``slack``: an incoming-webhook message, ``{"text", "blocks"}``: one Block Kit section whose
  mrkdwn text is the title in bold and the body; ``text`` is the plain fallback shown in
  notifications.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from herald.errors import PermanentError

#: Slack's limit for a section block's text.
SLACK_SECTION_MAX = 3000
#: Slack's limit for the top-level text.
SLACK_TEXT_MAX = 40_000


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def webhook_body(request: Mapping[str, Any]) -> bytes:
    """The Standard Webhooks JSON body of a delivery."""
    created = _iso(request["created_at"])
    return _json(
        {
            "type": request["event_type"],
            "timestamp": created,
            "data": {
                "delivery_id": request["delivery_id"],
                "notification_id": request["notification_id"],
                "event_id": request["event_id"],
                "user_id": request["user_id"],
                "event_type": request["event_type"],
                "title": request.get("subject") or "",
                "body": request.get("body_text") or "",
                "locale": request.get("locale") or "",
                "created_at": created,
            },
        }
    )


def mrkdwn_escape(text: str) -> str:
    """Text safe in Slack mrkdwn: ``&``, ``<`` and ``>`` are control characters there."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def slack_body(request: Mapping[str, Any]) -> bytes:
    """The incoming-webhook JSON body of a delivery; PermanentError when it has no text."""
    title = (request.get("subject") or "").strip()
    body = (request.get("body_text") or "").strip()
    if not title and not body:
        raise PermanentError("nothing to post: no title and no body", error_class="slack.empty")
    plain = f"{title}\n{body}" if title and body else title or body
    marked = "\n".join(
        part for part in (f"*{mrkdwn_escape(title)}*" if title else "", mrkdwn_escape(body)) if part
    )
    return _json(
        {
            "text": _cut(mrkdwn_escape(plain), SLACK_TEXT_MAX),
            "blocks": [
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": _cut(marked, SLACK_SECTION_MAX)},
                }
            ],
        }
    )


FORMATTERS: dict[str, Callable[[Mapping[str, Any]], bytes]] = {
    "webhook": webhook_body,
    "slack": slack_body,
}
