"""The default event types every Herald installation starts with, seeded through the ingest API.

Seeding is a ``PUT /v1/event-types/{code}`` per type, so it is idempotent: running it again
rewrites the same definitions (and republishes them to the compacted event types topic).

``user.login`` is an input, not a notification: the router reads logins to learn each user's
devices and raises ``security.login_alert`` for an unknown one. The API requires at least one
channel, so the login type has ``inapp`` but is off by default (``default_enabled=false``):
a login notifies nobody unless a user explicitly opts in.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

#: Event type codes the rest of Herald refers to.
USER_REGISTERED: Final = "user.registered"
USER_LOGIN: Final = "user.login"
LOGIN_ALERT: Final = "security.login_alert"
COMMENT_CREATED: Final = "comment.created"
DIGEST_WEEKLY: Final = "digest.weekly"

#: The PUT bodies of the default event types, by code.
DEFAULT_EVENT_TYPES: Final[dict[str, dict[str, Any]]] = {
    USER_REGISTERED: {
        "name": "Welcome",
        "description": "Sent once, when a user registers.",
        "channels": ["inapp", "email"],
        "templates": {
            "inapp": {
                "title": "Welcome to Herald, {{ display_name }}!",
                "body": "Hi {{ display_name }}, your account is ready.",
            },
            "email": {
                "title": "Welcome to Herald, {{ display_name }}!",
                "body": "Hi {{ display_name }},\n\nyour account is ready. Welcome aboard!",
                "html": "<p>Hi {{ display_name }},</p>"
                "<p>your account is ready. Welcome aboard!</p>",
            },
        },
    },
    USER_LOGIN: {
        "name": "Sign-in",
        "description": "A user signed in (context: device_id, user_agent, ip). Input for "
        "new-device alerts; notifies nobody unless a user opts in.",
        "channels": ["inapp"],
        "default_enabled": False,
        "templates": {
            "inapp": {"title": "Signed in", "body": "Signed in from {{ user_agent }}."},
        },
    },
    LOGIN_ALERT: {
        "name": "New sign-in",
        "description": "A sign-in from a device not seen before for this user.",
        "channels": ["inapp", "email"],
        "mandatory": True,
        "urgent": True,
        "templates": {
            "inapp": {
                "title": "New sign-in from {{ user_agent }}",
                "body": "We noticed a sign-in from a new device ({{ user_agent }}, IP {{ ip }}). "
                "If this was not you, change your password.",
            },
            "email": {
                "title": "New sign-in to your account",
                "body": "Hi {{ display_name }},\n\nsomeone signed in to your account from a new "
                "device:\n\n  device: {{ device_id }}\n  browser: {{ user_agent }}\n  "
                "IP address: {{ ip }}\n\nIf this was not you, change your password now.",
            },
        },
    },
    COMMENT_CREATED: {
        "name": "New comment",
        "description": "Someone commented on a post you take part in.",
        # Webhook and Slack use the in-app template (a user without an endpoint is skipped).
        "channels": ["inapp", "email", "sms", "webhook", "slack"],
        "templates": {
            "inapp": {
                "title": "New comment on {{ post_title }}",
                "body": "{{ author_name }} wrote: {{ excerpt }}",
            },
            "email": {
                "title": "New comment on {{ post_title }}",
                "body": "Hi {{ display_name }},\n\n{{ author_name }} wrote on "
                "{{ post_title }}:\n\n  {{ excerpt }}",
                "html": "<p>Hi {{ display_name }},</p><p>{{ author_name }} wrote on "
                "<strong>{{ post_title }}</strong>:</p><blockquote>{{ excerpt }}</blockquote>",
            },
            "sms": {"title": "", "body": "{{ author_name }} commented on {{ post_title }}"},
        },
    },
    DIGEST_WEEKLY: {
        "name": "Weekly summary",
        "description": "Every Monday: the week's unread notifications.",
        "channels": ["email"],
        "templates": {
            "email": {
                "title": "Your week: {{ count }} unread notification{{ plural }}",
                "body": "Hi {{ display_name }},\n\nyou have {{ count }} unread "
                "notification{{ plural }} from the week of {{ week }}:\n\n{{ titles }}",
            },
        },
    },
}


def seed_event_types(api: httpx.Client) -> list[str]:
    """PUT every default event type through the ingest API ``api`` (a client with its base URL
    and admin key). Idempotent. Returns the codes; raises ``httpx.HTTPStatusError`` on refusal."""
    for code, body in DEFAULT_EVENT_TYPES.items():
        response = api.put(f"/v1/event-types/{code}", json=body)
        response.raise_for_status()
    return list(DEFAULT_EVENT_TYPES)
