"""The read API's response bodies (pydantic models, with OpenAPI examples)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_NOTIFICATION_EXAMPLE: dict[str, Any] = {
    "id": "7d444840-9dc0-51d8-8b0f-5a2a1f5bc3c1",
    "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "user_id": "user-42",
    "event_type": "comment.created",
    "title": "New comment on Kafka at scale",
    "message": "user-17 commented on your post.",
    "metadata": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
    "is_read": False,
    "read_at": None,
    "archived_at": None,
    "created_at": "2024-05-01T12:30:15.123000Z",
}


class NotificationOut(BaseModel):
    """One notification of a user's inbox."""

    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_NOTIFICATION_EXAMPLE]}
    )

    id: uuid.UUID = Field(description="uuid5(event_id, user_id).")
    event_id: uuid.UUID = Field(description="The event it came from.")
    user_id: str
    event_type: str = Field(description="The event type's code.")
    title: str
    message: str
    metadata: dict[str, Any] = Field(description="The event's metadata, carried over.")
    is_read: bool
    read_at: datetime | None
    archived_at: datetime | None = Field(description="Set when archived; null otherwise.")
    created_at: datetime = Field(description="When the router created it (the inbox order).")


class InboxPage(BaseModel):
    """A page of the inbox, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [_NOTIFICATION_EXAMPLE],
                    "next_cursor": (
                        "MToxNzE0NTY2NjE1MTIzMDAwOjdkNDQ0ODQwOWRjMDUxZDg4YjBmNWEyYTFmNWJjM2Mx"
                    ),
                }
            ]
        }
    )

    items: list[NotificationOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= (with the same filters) for the next page; null on the "
        "last page."
    )


class UnreadCount(BaseModel):
    """How many notifications the user has not read (archived ones not counted)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"user_id": "user-42", "unread": 3}]})

    user_id: str
    unread: int = Field(ge=0)


class ReadAllResult(BaseModel):
    """What "mark all read" changed."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"user_id": "user-42", "updated": 3}]}
    )

    user_id: str
    updated: int = Field(ge=0, description="Notifications that were unread and now are read.")


class AttemptOut(BaseModel):
    """One step of a delivery's history (one status event)."""

    model_config = ConfigDict(from_attributes=True)

    attempt: int = Field(ge=0, description="1 for the first try, 2 for the first retry...")
    status: str
    error_class: str | None
    error_message: str | None
    occurred_at: datetime
    provider: str | None = Field(
        default=None,
        description="Which of the channel's providers made the attempt (sms-a, smtp-b...; "
        "webhook, slack), when known.",
    )


class DeliveryOut(BaseModel):
    """The latest state of a notification on one channel, with its history."""

    model_config = ConfigDict(from_attributes=True)

    delivery_id: uuid.UUID = Field(description="uuid5(notification_id, channel).")
    channel: str = Field(examples=["email"])
    status: str = Field(
        description="pending, skipped, sent, delivered, retrying, failed or dead.",
        examples=["sent"],
    )
    attempted_at: datetime | None
    delivered_at: datetime | None
    retry_count: int = Field(ge=0)
    error_class: str | None
    error_message: str | None
    provider_message_id: str | None = Field(
        description="The provider's id: the email's Message-ID, the SMS message sid."
    )
    provider: str | None = Field(
        default=None,
        description="Which of the channel's providers made the latest attempt (provider "
        "failover: sms-a, sms-b, smtp-a...), when known.",
    )
    updated_at: datetime
    attempts: list[AttemptOut] = Field(description="Oldest first.")


class NotificationDetail(NotificationOut):
    """A notification with its delivery status on every channel."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    **_NOTIFICATION_EXAMPLE,
                    "deliveries": [
                        {
                            "delivery_id": "886313e1-3b8a-5372-9b90-0c9aee199e5d",
                            "channel": "email",
                            "status": "sent",
                            "attempted_at": "2024-05-01T12:30:16.020000Z",
                            "delivered_at": "2024-05-01T12:30:16.020000Z",
                            "retry_count": 1,
                            "error_class": None,
                            "error_message": None,
                            "provider_message_id": "<886313e1@herald.local>",
                            "provider": "smtp-b",
                            "updated_at": "2024-05-01T12:30:16.031000Z",
                            "attempts": [
                                {
                                    "attempt": 1,
                                    "status": "retrying",
                                    "error_class": "smtp.451",
                                    "error_message": "451 try again later",
                                    "occurred_at": "2024-05-01T12:30:15.400000Z",
                                    "provider": "smtp-a",
                                },
                                {
                                    "attempt": 2,
                                    "status": "sent",
                                    "error_class": None,
                                    "error_message": None,
                                    "occurred_at": "2024-05-01T12:30:16.020000Z",
                                    "provider": "smtp-b",
                                },
                            ],
                        }
                    ],
                }
            ]
        },
    )

    deliveries: list[DeliveryOut] = Field(description="One per channel, by channel name.")


class UserTokenOut(BaseModel):
    """A user's token, for the product's backend to hand to that user's front end."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "user-42",
                    "token": "5f0c6a1d1e9c4a8b0d3f2e7c6b5a49382716f5e4d3c2b1a0f9e8d7c6b5a49382",
                }
            ]
        }
    )

    user_id: str
    token: str = Field(description="Send as X-User-Token, or ?token= on the stream.")
