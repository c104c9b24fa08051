"""The router's decisions as pure functions: no broker, no tables, no clock of their own.

- :func:`decode_input`: a consumed value as the record it must be, or a typed poison error.
- :func:`check_event_type` / :func:`expand`: stage 1, an event into one record per recipient.
- :func:`choose_channels`: which of an event type's channels a user gets, and why not the rest.
- :func:`route`: stage 2, one recipient's copy of an event into the notification, the delivery
  requests and the status events (``pending``, none for in-app, or ``skipped``) it makes,
  holding non-urgent email and SMS during the user's quiet hours
  (:mod:`services.router.quiet_hours`).
- :func:`recipient_outputs` / :func:`routed_outputs`: those records as Kafka records
  (:class:`herald.streaming.Outgoing`), on the catalogue's topics, keyed as the design says;
  :func:`held_rows`: the held deliveries as ``held_delivery`` rows (services.router.holds).

Every error a record can cause is a :class:`herald.errors.PermanentError` with a stable
``error_class`` (``serde.*``, ``record.*``, ``event_type.*``, ``user.unknown``,
``template.*``): the agents send the record to the events DLQ with it. Records are bounded
before anything else reads them: ids of 1 to ``MAX_ID_LENGTH`` (255) characters
(``record.invalid_id``), at most ``MAX_RECIPIENTS`` (10,000) recipients per event
(``record.too_many_recipients``), and context, metadata, user fields and template sources
within :mod:`herald.bounds` (``record.too_long``), see :func:`check_bounds`.

Templates see the event's ``context`` plus these built-ins (the event's own keys win, so a
producer that sends its own ``display_name`` gets it):

==================  ==========================================================
``user_id``         the recipient's user id
``display_name``    the recipient's display name, or their user id if unset
``locale``          the recipient's locale (``en`` if unknown)
``event_id``        the event's id
``event_type``      the event type's code
``event_type_name`` the event type's name, or its code if unnamed
``actor_id``        who caused the event (empty if nobody did)
``occurred_at``     when the event happened, ISO 8601 in UTC
==================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from herald import bounds
from herald.channels import ENDPOINT_CHANNELS, HOLDABLE_CHANNELS
from herald.db.models import MAX_URL_LENGTH
from herald.errors import PermanentError
from herald.identity import (
    MAX_ID_LENGTH,
    MAX_RECIPIENTS,
    check_id_length,
    delivery_id,
    notification_id,
)
from herald.serde import (
    CorruptRecordError,
    IncompatibleSchemaError,
    NotAvroError,
    Record,
    SerdeError,
    UnknownSchemaError,
    decode,
    default_registry,
    encode,
)
from herald.status import status_event, status_outgoing
from herald.streaming import Outgoing
from herald.templates import CHANNELS, MAX_SOURCE_CHARS, generate_templates, render
from schemas import Catalogue
from services.router import quiet_hours

EVENT = "herald.Event"
EVENT_TYPE = "herald.EventType"
USER = "herald.User"
PREFERENCES = "herald.Preferences"
RECIPIENT_EVENT = "herald.RecipientEvent"
NOTIFICATION = "herald.Notification"
DELIVERY_REQUEST = "herald.DeliveryRequest"

#: The channels quiet hours hold back; the in-app inbox, webhooks and Slack are never held.
_HOLDABLE = frozenset(HOLDABLE_CHANNELS)

#: How a channel is named in a skip reason a person reads.
_CHANNEL_LABELS = {
    "inapp": "in-app",
    "email": "email",
    "sms": "SMS",
    "webhook": "webhook",
    "slack": "Slack",
}


@dataclass(frozen=True)
class Rendered:
    """One channel's message, rendered."""

    title: str
    body: str
    html: str | None = None


@dataclass(frozen=True)
class Held:
    """A delivery request held back by the user's quiet hours until ``release_at`` (UTC)."""

    delivery: Record
    release_at: datetime


@dataclass(frozen=True)
class Routed:
    """What one recipient's copy of an event makes.

    ``notification`` is ``None`` when no channel delivers it (the user opted out, or has no
    address for any of the type's channels): there is then nothing for an inbox, and the
    skipped statuses alone say why. ``deliveries`` go to their channel topics now; ``held``
    ones are stored and go there when the user's quiet hours end. Each of both has a
    ``pending`` status (a held one's says why and until when), except the in-app delivery,
    whose first status is the ``delivered`` inapp_store writes.
    """

    notification: Record | None
    deliveries: list[Record] = field(default_factory=list)
    statuses: list[Record] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)


# --- decoding -----------------------------------------------------------------------------


def decode_input(data: bytes | None, full_name: str) -> Record:
    """Decode a consumed value that must be a ``full_name`` record (any known version of it).

    Raises :class:`PermanentError` for poison: ``serde.not_avro`` (not single-object Avro, or a
    null value), ``serde.unknown_schema`` (a fingerprint nobody registered),
    ``serde.wrong_schema`` (a valid record of another type), ``serde.incompatible`` or
    ``serde.corrupt``.
    """
    registry = default_registry()
    try:
        writer = registry.writer_of(data or b"")
    except NotAvroError as exc:
        raise PermanentError(str(exc), error_class="serde.not_avro") from None
    except UnknownSchemaError as exc:
        raise PermanentError(str(exc), error_class="serde.unknown_schema") from None
    if writer.full_name != full_name:
        raise PermanentError(
            f"expected a {full_name} record, got a {writer.full_name} record",
            error_class="serde.wrong_schema",
        )
    try:
        record = decode(data or b"", full_name)
    except IncompatibleSchemaError as exc:
        raise PermanentError(str(exc), error_class="serde.incompatible") from None
    except CorruptRecordError as exc:
        raise PermanentError(str(exc), error_class="serde.corrupt") from None
    except SerdeError as exc:  # any other serde failure is still this record's fault
        raise PermanentError(str(exc), error_class="serde.error") from None
    check_bounds(record, full_name)
    return record


#: The string fields of a ``herald.User`` record, each at most ``MAX_ID_LENGTH`` characters
#: (the ingest API allows 254 for an email, 200 for a display name, less for the rest).
_USER_FIELDS = ("email", "phone", "locale", "timezone", "display_name")


def check_bounds(record: Mapping[str, Any], full_name: str) -> None:
    """Refuse a decoded record Herald must not process: an id (event id, event type code,
    actor, recipient, user id) that is empty or longer than ``MAX_ID_LENGTH`` characters
    (``record.invalid_id``: PostgreSQL's btree indexes cannot hold any length), an event
    naming more than ``MAX_RECIPIENTS`` recipients (``record.too_many_recipients``: one
    event's fan-out must stay bounded), or a string past its bound (``record.too_long``): an
    event's context or metadata past :mod:`herald.bounds`, its producer or a user's field
    longer than ``MAX_ID_LENGTH``, a template longer than ``MAX_SOURCE_CHARS``. Anyone can
    write to the public events topic, so the ingest API's checks are not enough."""
    if full_name == EVENT:
        _check_event(record)
    elif full_name == RECIPIENT_EVENT:
        _check_id(record["user_id"], "user_id")
        _check_event(record["event"])
    elif full_name == USER:
        _check_id(record["user_id"], "user_id")
        for name in _USER_FIELDS:
            if record.get(name) is not None:
                _check_length(record[name], name, MAX_ID_LENGTH)
        for kind, url in (record.get("endpoints") or {}).items():
            _check_length(kind, "an endpoint kind", MAX_ID_LENGTH)
            _check_length(url, f"the {kind} endpoint URL", MAX_URL_LENGTH)
    elif full_name == PREFERENCES:
        _check_id(record["user_id"], "user_id")
        for code in record.get("event_overrides") or ():
            _check_id(code, "event type code")
    elif full_name == EVENT_TYPE:
        _check_id(record["code"], "event type code")
        for channel, template in (record.get("templates") or {}).items():
            for part, source in template.items():
                if isinstance(source, str):
                    _check_length(source, f"the {channel} {part} template", MAX_SOURCE_CHARS)


def _check_event(event: Mapping[str, Any]) -> None:
    _check_id(event["event_id"], "event_id")
    _check_id(event["event_type"], "event_type")
    if event.get("actor_id") is not None:
        _check_id(event["actor_id"], "actor_id")
    _check_length(event.get("producer") or "", "producer", MAX_ID_LENGTH)
    try:
        bounds.check_map(event.get("context") or {}, bounds.CONTEXT)
        bounds.check_map(event.get("metadata") or {}, bounds.METADATA)
    except ValueError as exc:
        raise PermanentError(str(exc), error_class="record.too_long") from None
    recipients = event.get("recipients") or ()
    if len(recipients) > MAX_RECIPIENTS:
        raise PermanentError(
            f"the event names {len(recipients)} recipients; at most {MAX_RECIPIENTS} per "
            "event (split it into several events)",
            error_class="record.too_many_recipients",
        )
    for user_id in recipients:
        # Empty ids are dropped by expand(); only over-long ones are refused.
        if len(user_id) > MAX_ID_LENGTH:
            _check_id(user_id, "recipient")


def _check_id(value: str, what: str) -> None:
    try:
        check_id_length(value, what)
    except ValueError as exc:
        raise PermanentError(str(exc), error_class="record.invalid_id") from None


def _check_length(value: str, what: str, limit: int) -> None:
    if len(value) > limit:
        raise PermanentError(
            f"{what} has {len(value)} characters; at most {limit}",
            error_class="record.too_long",
        )


# --- stage 1: events into recipients --------------------------------------------------------


def check_event_type(
    event: Mapping[str, Any], event_type: Mapping[str, Any] | None
) -> Mapping[str, Any]:
    """The event's type, if it may be notified; refuse an event whose type is not registered
    (``event_type.unknown``) or is switched off (``event_type.inactive``)."""
    code = event["event_type"]
    if event_type is None:
        raise PermanentError(
            f"event type {code!r} is not registered (no record on the event types topic)",
            error_class="event_type.unknown",
        )
    if not event_type.get("is_active", True):
        raise PermanentError(f"event type {code!r} is inactive", error_class="event_type.inactive")
    return event_type


def expand(event: Mapping[str, Any]) -> list[Record]:
    """One ``herald.RecipientEvent`` per recipient: the actor is left out, duplicates (and
    empty ids) are dropped, and the recipients' order is kept.

    Each copy's ``recipients`` holds only its own user id: stage 2 (and the login alert, and
    the digest) never read the list, and copying all of it into every copy made the output
    grow with the square of the recipient count (10,000 recipients: about 3.7 GB)."""
    actor = event.get("actor_id")
    users = dict.fromkeys(u for u in event.get("recipients", ()) if u and u != actor)
    return [{"user_id": user_id, "event": {**event, "recipients": [user_id]}} for user_id in users]


def recipient_output(recipient: Mapping[str, Any], catalogue: Catalogue) -> Outgoing:
    """The record stage 1 writes for one recipient: its copy on the recipients topic, keyed by
    user id so that it lands on the partition of that user's tables."""
    return Outgoing(
        catalogue.recipients.name,
        recipient["user_id"].encode(),
        encode(RECIPIENT_EVENT, recipient),
    )


def recipient_outputs(event: Mapping[str, Any], catalogue: Catalogue) -> list[Outgoing]:
    """Every recipient's copy of ``event`` on the recipients topic."""
    return [recipient_output(recipient, catalogue) for recipient in expand(event)]


# --- stage 2: one recipient --------------------------------------------------------------


def default_preferences(user_id: str) -> Record:
    """The preferences of a user who never set any: every channel on, no per-type choice."""
    return {
        "user_id": user_id,
        "inapp_enabled": True,
        "email_enabled": True,
        "sms_enabled": True,
        "webhook_enabled": True,
        "slack_enabled": True,
        "quiet_hours_start": None,
        "quiet_hours_end": None,
        "event_overrides": {},
    }


def choose_channels(
    event_type: Mapping[str, Any],
    preferences: Mapping[str, Any] | None,
    user: Mapping[str, Any] | None = None,
) -> dict[str, str | None]:
    """Every channel of the event type, mapped to ``None`` (deliver) or why it is skipped.

    In order: the user's choice for this event type (``event_overrides``: ``enabled`` false
    turns it off, a ``channels`` list picks channels), else the type's ``default_enabled``
    (off unless the user opted in with an override); then the user's channel switches
    (``inapp_enabled``, ``email_enabled``, ``sms_enabled``, ``webhook_enabled``,
    ``slack_enabled``). A ``mandatory`` type ignores all of those. Finally, with ``user``
    given, a channel needs an address: an email, a phone number, or for webhook and Slack an
    endpoint of that kind in the user record's ``endpoints``. ``preferences=None`` means the
    defaults (everything on). Channels Herald does not know are ignored.
    """
    code = event_type["code"]
    prefs = preferences if preferences is not None else default_preferences("")
    channels = [c for c in dict.fromkeys(event_type.get("channels", ())) if c in CHANNELS]
    choices: dict[str, str | None] = dict.fromkeys(channels)
    if not event_type.get("mandatory", False):
        override = (prefs.get("event_overrides") or {}).get(code)
        for channel in channels:
            choices[channel] = _preference_skip(channel, code, event_type, prefs, override)
    if user is not None:
        for channel in channels:
            if choices[channel] is None:
                choices[channel] = _address_skip(channel, user)
    return choices


def _preference_skip(
    channel: str,
    code: str,
    event_type: Mapping[str, Any],
    prefs: Mapping[str, Any],
    override: Mapping[str, Any] | None,
) -> str | None:
    label = _CHANNEL_LABELS.get(channel, channel)
    if override is not None:
        if not override.get("enabled", True):
            return f"the user turned off {code!r} notifications in their preferences"
        chosen = override.get("channels")
        if chosen is not None and channel not in chosen:
            return f"the user's preferences for {code!r} do not include {label}"
    elif not event_type.get("default_enabled", True):
        return f"{code!r} is off by default and the user has not turned it on"
    if not prefs.get(f"{channel}_enabled", True):
        return f"{label} disabled by the user's preferences"
    return None


def _address_skip(channel: str, user: Mapping[str, Any]) -> str | None:
    if channel == "email" and not user.get("email"):
        return "user has no email address"
    if channel == "sms" and not user.get("phone"):
        return "user has no phone number"
    if channel in ENDPOINT_CHANNELS and not (user.get("endpoints") or {}).get(channel):
        return f"user has no {_CHANNEL_LABELS[channel]} endpoint"
    return None


def destination(channel: str, user: Mapping[str, Any]) -> str:
    """Where a channel's message goes: the email address, the phone number, the endpoint URL
    (webhook, Slack: informational, the sender sends to the URL stored at send time), or the
    user id (in-app)."""
    if channel == "email":
        return str(user["email"])
    if channel == "sms":
        return str(user["phone"])
    if channel in ENDPOINT_CHANNELS:
        return str(user["endpoints"][channel])
    return str(user["user_id"])


def template_context(
    event: Mapping[str, Any], user: Mapping[str, Any], event_type: Mapping[str, Any]
) -> dict[str, Any]:
    """The variables templates see: the built-ins of this module's docstring, then the event's
    context on top. Context values are data: they are never rendered as templates."""
    occurred_at = event.get("occurred_at")
    builtins: dict[str, Any] = {
        "user_id": user["user_id"],
        "display_name": user.get("display_name") or user["user_id"],
        "locale": user.get("locale") or "en",
        "event_id": event["event_id"],
        "event_type": event_type["code"],
        "event_type_name": event_type.get("name") or event_type["code"],
        "actor_id": event.get("actor_id") or "",
        "occurred_at": occurred_at.isoformat() if isinstance(occurred_at, datetime) else "",
    }
    return {**builtins, **(event.get("context") or {})}


def render_channel(
    event_type: Mapping[str, Any],
    channel: str,
    context: Mapping[str, Any],
    context_keys: Iterable[str] = (),
) -> Rendered:
    """Render one channel's title, body (and, for email, HTML) from the event type's templates.

    A channel without a template of its own uses the in-app one; a type without any gets
    generated ones (its name as title, ``context_keys`` listed in the body). Raises
    :class:`PermanentError` (``template.missing_key``, ``template.error``).
    """
    templates = event_type.get("templates") or {}
    template: Mapping[str, Any] | None = templates.get(channel) or templates.get("inapp")
    if template is None:
        name = event_type.get("name") or event_type["code"]
        template = generate_templates(name, context_keys, (channel,))[channel]
    html_source: str | None = template.get("html") if channel == "email" else None
    return Rendered(
        title=render(str(template.get("title") or ""), context),
        body=render(str(template["body"]), context),
        html=render(html_source, context, html=True) if html_source else None,
    )


def route(
    recipient_event: Mapping[str, Any],
    user: Mapping[str, Any],
    preferences: Mapping[str, Any] | None,
    event_type: Mapping[str, Any],
    now: datetime,
) -> Routed:
    """Decide and render everything one recipient's copy of an event makes.

    ``preferences=None`` means the defaults. Ids are deterministic
    (:mod:`herald.identity`), so routing the same copy twice makes the same records.
    During the user's quiet hours (preferences' ``quiet_hours_*``, in the user's ``timezone``,
    at ``now``) the email and SMS deliveries of a type that is not ``urgent`` are ``held``
    until the window ends, with a ``pending`` status of error class ``quiet_hours.held``
    naming the release time; in-app, webhook and Slack deliveries are not held.
    Raises :class:`PermanentError` when the type is inactive or a template cannot render.
    """
    event = recipient_event["event"]
    user_id = recipient_event["user_id"]
    check_event_type(event, event_type)
    choices = choose_channels(event_type, preferences, user)
    nid = notification_id(event["event_id"], user_id)
    statuses: list[Record] = []
    deliveries: list[Record] = []
    delivered = [channel for channel, reason in choices.items() if reason is None]
    if not delivered:
        for channel, reason in choices.items():
            statuses.append(_skipped(nid, user_id, channel, reason, now))
        return Routed(None, [], statuses)

    context = template_context(event, user, event_type)
    # Generated templates list the event's own context keys, not the built-ins.
    keys = tuple(event.get("context") or ())
    inbox = render_channel(event_type, "inapp", context, keys)
    notification = {
        "notification_id": nid,
        "event_id": event["event_id"],
        "user_id": user_id,
        "event_type": event_type["code"],
        "title": inbox.title,
        "message": inbox.body,
        "channels": delivered,
        "metadata": dict(event.get("metadata") or {}),
        "created_at": now,
    }
    release_at = None
    if not event_type.get("urgent", False) and any(c in _HOLDABLE for c in delivered):
        release_at = quiet_hours.quiet_until(preferences, user.get("timezone"), now)
    held: list[Held] = []
    for channel, reason in choices.items():
        if reason is not None:
            statuses.append(_skipped(nid, user_id, channel, reason, now))
            continue
        message = (
            inbox if channel == "inapp" else render_channel(event_type, channel, context, keys)
        )
        delivery = {
            "delivery_id": delivery_id(nid, channel),
            "notification_id": nid,
            "event_id": event["event_id"],
            "user_id": user_id,
            "event_type": event_type["code"],
            "channel": channel,
            "destination": destination(channel, user),
            "subject": "" if channel == "sms" else message.title,
            "body_text": message.body,
            "body_html": message.html,
            "locale": user.get("locale") or "en",
            "created_at": now,
        }
        if release_at is not None and channel in _HOLDABLE:
            held.append(Held(delivery, release_at))
            statuses.append(_held(delivery, release_at, preferences, user, now))
            continue
        deliveries.append(delivery)
        if channel != "inapp":
            # inapp_store completes an in-app delivery as it stores it, and its `delivered`
            # is the delivery's first status: a `pending` before it would be one more record
            # to encode, produce, consume and write per notification, outdated milliseconds
            # later (the in-app path's cost; issue 10).
            statuses.append(status_event(delivery, "pending", now=now))
    return Routed(notification, deliveries, statuses, held)


def _held(
    delivery: Mapping[str, Any],
    release_at: datetime,
    preferences: Mapping[str, Any] | None,
    user: Mapping[str, Any],
    now: datetime,
) -> Record:
    window = quiet_hours.quiet_window(preferences)
    assert window is not None  # release_at comes from this window
    message = quiet_hours.held_message(release_at, *window, user.get("timezone"))
    return status_event(
        delivery,
        "pending",
        error_class=quiet_hours.HELD_ERROR_CLASS,
        error_message=message,
        now=now,
    )


def _skipped(nid: str, user_id: str, channel: str, reason: str | None, now: datetime) -> Record:
    ids = {
        "delivery_id": delivery_id(nid, channel),
        "notification_id": nid,
        "user_id": user_id,
        "channel": channel,
    }
    return status_event(ids, "skipped", error_message=reason, now=now)


def routed_outputs(routed: Routed, catalogue: Catalogue) -> list[Outgoing]:
    """The records stage 2 writes: the notification and the deliveries keyed by user id, each
    delivery on its channel's topic, and the statuses (keyed by notification id)."""
    out: list[Outgoing] = []
    if routed.notification is not None:
        notification = routed.notification
        out.append(
            Outgoing(
                catalogue.notifications.name,
                notification["user_id"].encode(),
                encode(NOTIFICATION, notification),
            )
        )
    for delivery in routed.deliveries:
        out.append(
            Outgoing(
                catalogue.for_channel(delivery["channel"]).name,
                delivery["user_id"].encode(),
                encode(DELIVERY_REQUEST, delivery),
            )
        )
    out.extend(status_outgoing(catalogue, status) for status in routed.statuses)
    return out


def held_rows(routed: Routed) -> list[dict[str, Any]]:
    """The held deliveries as ``held_delivery`` rows (herald.db.models.HeldDelivery): the
    encoded ``herald.DeliveryRequest`` is produced as it is, keyed by user id, on its
    channel's topic when ``release_at`` comes."""
    return [
        {
            "delivery_id": held.delivery["delivery_id"],
            "notification_id": held.delivery["notification_id"],
            "user_id": held.delivery["user_id"],
            "channel": held.delivery["channel"],
            "release_at": held.release_at,
            "payload": encode(DELIVERY_REQUEST, held.delivery),
        }
        for held in routed.held
    ]


# --- how long a table lookup may wait -----------------------------------------------------


def lookup_deadline(record_time: float, ready_at: float, now: float, grace: float) -> float:
    """Until when (epoch seconds) a lookup may wait for a table that is a little behind.

    A user or event type written just before the record that needs it may not have reached
    this worker's table yet, so a miss is retried until the record (or, if later, this
    worker's last rebalance) is ``grace`` seconds old. Deadlines of consecutive records are
    thus shared, not added up: a burst of misses costs about ``grace`` in all, and an old
    record read from a backlog after the tables caught up fails fast. Never later than
    ``now + grace``, whatever timestamp a producer set.
    """
    return min(now, max(record_time, ready_at)) + grace
