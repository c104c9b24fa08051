"""The channels Herald delivers on: one list, which the router, the templates, the database
constraints and inapp_store all read."""

from __future__ import annotations

from typing import Final

#: Every channel, in the order templates and preferences list them.
CHANNELS: Final = ("inapp", "email", "sms", "webhook", "slack")
#: Channels whose delivery is an HTTP POST to an endpoint the user registered
#: (``channel_endpoint``; the URL travels in the user record's ``endpoints``).
ENDPOINT_CHANNELS: Final = ("webhook", "slack")
#: Channels held during a user's quiet hours (they wake a person up).
HOLDABLE_CHANNELS: Final = ("email", "sms")
