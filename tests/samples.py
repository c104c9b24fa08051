"""Realistic sample records for every current Avro schema, shared by unit and integration tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

WHEN = datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC)
EVENT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
NOTIFICATION_ID = "7d444840-9dc0-51d8-8b0f-5a2a1f5bc3c1"
DELIVERY_ID = "886313e1-3b8a-5372-9b90-0c9aee199e5d"

EVENT: dict[str, Any] = {
    "event_id": EVENT_ID,
    "event_type": "comment.created",
    "occurred_at": WHEN,
    "producer": "blog-service",
    "actor_id": "user-17",
    "recipients": ["user-42", "user-43"],
    "context": {"post_title": "Kafka at scale", "comment_url": "https://blog.example/c/991"},
    "metadata": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
}

#: A realistic record for every current schema; a test makes sure none is missing.
SAMPLES: dict[str, dict[str, Any]] = {
    "herald.Event": EVENT,
    "herald.EventType": {
        "code": "comment.created",
        "name": "New comment",
        "description": "Someone commented on your post.",
        "default_enabled": True,
        "is_active": True,
        "mandatory": False,
        "channels": ["inapp", "email"],
        "templates": {
            "inapp": {"title": "New comment", "body": "{{ actor }} commented", "html": None},
            "email": {
                "title": "New comment on {{ post_title }}",
                "body": "Read it at {{ comment_url }}",
                "html": "<p>Read it <a href='{{ comment_url }}'>here</a></p>",
            },
        },
        "urgent": False,
        "digest": {"window_s": 600, "key": "post_id"},
        "updated_at": WHEN,
    },
    "herald.User": {
        "user_id": "user-42",
        "email": "ada@example.com",
        "phone": "+14155550123",
        "locale": "en-GB",
        "timezone": "Europe/London",
        "display_name": "Ada",
        "endpoints": {"webhook": "https://hooks.example.com/herald"},
        "updated_at": WHEN,
    },
    "herald.Preferences": {
        "user_id": "user-42",
        "inapp_enabled": True,
        "email_enabled": True,
        "sms_enabled": False,
        "webhook_enabled": True,
        "slack_enabled": False,
        "quiet_hours_start": "22:00",
        "quiet_hours_end": "07:30",
        "event_overrides": {
            "comment.created": {"enabled": True, "channels": ["inapp"]},
            "newsletter.sent": {"enabled": False, "channels": None},
        },
        "updated_at": WHEN,
    },
    "herald.RecipientEvent": {"user_id": "user-42", "event": EVENT},
    "herald.Notification": {
        "notification_id": NOTIFICATION_ID,
        "event_id": EVENT_ID,
        "user_id": "user-42",
        "event_type": "comment.created",
        "title": "New comment on Kafka at scale",
        "message": "user-17 commented on your post.",
        "channels": ["inapp", "email"],
        "metadata": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
        "created_at": WHEN,
    },
    "herald.DeliveryRequest": {
        "delivery_id": DELIVERY_ID,
        "notification_id": NOTIFICATION_ID,
        "event_id": EVENT_ID,
        "user_id": "user-42",
        "event_type": "comment.created",
        "channel": "email",
        "destination": "ada@example.com",
        "subject": "New comment on Kafka at scale",
        "body_text": "Read it at https://blog.example/c/991",
        "body_html": "<p>Read it <a href='https://blog.example/c/991'>here</a></p>",
        "locale": "en-GB",
        "created_at": WHEN,
    },
    "herald.DeliveryStatus": {
        "delivery_id": DELIVERY_ID,
        "notification_id": NOTIFICATION_ID,
        "user_id": "user-42",
        "channel": "email",
        "status": "retrying",
        "attempt": 2,
        "error_class": "SMTPServerDisconnected",
        "error_message": "Connection unexpectedly closed",
        "provider_message_id": None,
        "provider": "smtp-a",
        "occurred_at": WHEN,
    },
}
