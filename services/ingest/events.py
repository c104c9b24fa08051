"""``POST /v1/events``: publish domain events over HTTP.

Each event becomes one ``herald.Event`` on ``herald.events.v1`` (key: event id), exactly what a
Kafka producer would write; the router takes it from there. The request is answered 202 once
Kafka has acknowledged every event of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Depends, Header, status
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
)
from sqlalchemy import Engine, Table, select

from herald.db.models import EventType
from herald.serde import encode
from herald.streaming import Outgoing
from herald.webapi import Problem, iso_8601_only, problem_responses
from services.ingest import idempotency
from services.ingest.deps import (
    ADMIN_RESPONSES,
    CallerDep,
    DbEngine,
    Limits,
    Publish,
    Topics,
    authorize_events,
)
from services.ingest.idempotency import REPLAYED_HEADER, KeyedRequest, Replay, request_hash
from services.ingest.publisher import PublishError
from services.ingest.validation import (
    Context,
    EventId,
    EventTypeCode,
    Metadata,
    UserId,
    as_utc,
    check_idempotency_key,
)

SCHEMA = "herald.Event"
EVENT_TYPE = cast(Table, EventType.__table__)

router = APIRouter(
    prefix="/v1/events",
    tags=["events"],
    dependencies=[Depends(authorize_events)],
    responses=ADMIN_RESPONSES,
)


class EventIn(BaseModel):
    """One domain event."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "event_type": "comment.created",
                    "recipients": ["user-42", "user-43"],
                    "actor_id": "user-17",
                    "context": {"post_title": "Kafka at scale", "comment_count": 3},
                    "metadata": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
                }
            ]
        },
    )

    event_type: EventTypeCode = Field(description="Code of a registered, active event type.")
    recipients: list[UserId] = Field(min_length=1, description="User ids to notify.")
    actor_id: UserId | None = Field(
        None, description="Who caused the event; never notified of their own action."
    )
    context: Context = Field(
        default_factory=dict,
        description="Template variables; numbers and booleans become strings, null ''.",
    )
    metadata: Metadata = Field(
        default_factory=dict, description="Carried onto the notifications; not rendered."
    )
    event_id: EventId | None = Field(
        None, description="A UUID; generated if absent. Re-sending an id never notifies twice."
    )
    occurred_at: (
        Annotated[datetime, BeforeValidator(iso_8601_only), AfterValidator(as_utc)] | None
    ) = Field(None, description="When it happened (ISO 8601; UTC if no offset); default: now.")
    producer: str | None = Field(
        None, max_length=200, description="Name of the sending application, for tracing."
    )


class EventBatch(BaseModel):
    """Several events in one request, published together."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1)


def _shape(body: Any) -> str:
    return "<batch>" if isinstance(body, Mapping) and "events" in body else "<event>"


# A batch is an object with "events"; anything else is read as one event, so its errors name
# the event's fields instead of listing both alternatives.
EventsBody = Annotated[
    Annotated[EventBatch, Tag("<batch>")] | Annotated[EventIn, Tag("<event>")],
    Discriminator(_shape),
]


class EventsAccepted(BaseModel):
    """The events are on Kafka; the router notifies their recipients."""

    accepted: int = Field(description="How many events were published.")
    event_ids: list[str] = Field(description="Their ids, in request order.")


def assign_event_ids(events: Sequence[EventIn], keyed: KeyedRequest | None = None) -> list[str]:
    """Every event's id: its own, else one derived from the request's ``Idempotency-Key``
    (``keyed``: the same key and body always derive the same ids), else a new uuid4.

    Raises :class:`Problem` (422) for an id repeated within the request.
    """
    ids = [
        event.event_id or (keyed.event_id(index) if keyed is not None else str(uuid.uuid4()))
        for index, event in enumerate(events)
    ]
    seen: set[str] = set()
    for index, event_id in enumerate(ids):
        if event_id in seen:
            raise _invalid(f"events[{index}].event_id {event_id} appears twice in this request")
        seen.add(event_id)
    return ids


def check_event_types(codes: Iterable[str], registry: Mapping[str, bool]) -> None:
    """Refuse the request if any code is unknown or inactive (``registry``: code → active)."""
    wanted = sorted(set(codes))
    unknown = [code for code in wanted if code not in registry]
    if unknown:
        raise Problem(
            422,
            "Unknown event type",
            f"unknown event type{_plural(unknown)} {_quoted(unknown)}: register "
            f"{'it' if len(unknown) == 1 else 'them'} with POST /v1/event-types first",
            kind="unknown-event-type",
            event_types=unknown,
        )
    inactive = [code for code in wanted if not registry[code]]
    if inactive:
        raise Problem(
            422,
            "Inactive event type",
            f"event type{_plural(inactive)} {_quoted(inactive)} "
            f"{'is' if len(inactive) == 1 else 'are'} inactive; reactivate with "
            f"PUT /v1/event-types/{inactive[0]} and is_active true",
            kind="inactive-event-type",
            event_types=inactive,
        )


def event_record(event: EventIn, event_id: str, *, producer: str, now: datetime) -> dict[str, Any]:
    """The ``herald.Event`` record for one accepted event."""
    return {
        "event_id": event_id,
        "event_type": event.event_type,
        "occurred_at": event.occurred_at or now,
        "producer": event.producer or producer,
        "actor_id": event.actor_id,
        "recipients": list(event.recipients),
        "context": event.context,
        "metadata": event.metadata,
    }


def lookup_event_types(engine: Engine, codes: Iterable[str]) -> dict[str, bool]:
    """``code → is_active`` for the given codes that exist: one query for the whole request."""
    query = select(EVENT_TYPE.c.code, EVENT_TYPE.c.is_active).where(
        EVENT_TYPE.c.code.in_(sorted(set(codes)))
    )
    # A connection only for this query: it goes back to the pool before the Kafka wait.
    with engine.connect() as connection:
        return {row.code: row.is_active for row in connection.execute(query)}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EventsAccepted,
    responses={
        202: {
            "headers": {
                REPLAYED_HEADER: {
                    "description": "`true` when this is the stored response of an earlier "
                    "request with the same Idempotency-Key and body (nothing was published).",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            }
        },
        **problem_responses(400, 409, 413, 422, 503),
    },
    summary="Publish one event or a batch",
)
def post_events(
    body: Annotated[
        EventsBody,
        Body(
            openapi_examples={
                "single": {
                    "summary": "One event",
                    "value": {
                        "event_type": "comment.created",
                        "recipients": ["user-42"],
                        "actor_id": "user-17",
                        "context": {"post_title": "Kafka at scale"},
                    },
                },
                "batch": {
                    "summary": "A batch",
                    "value": {
                        "events": [
                            {
                                "event_type": "comment.created",
                                "recipients": ["user-42"],
                                "context": {"post_title": "Kafka at scale"},
                            },
                            {
                                "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
                                "event_type": "security.new_device",
                                "recipients": ["user-43"],
                                "context": {"device": "Firefox on Linux"},
                            },
                        ]
                    },
                },
            }
        ),
    ],
    engine: DbEngine,
    publisher: Publish,
    topics: Topics,
    limits: Limits,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Any unique string (a UUID is best), 1 to 255 characters, scoped to "
            "your API key and kept with the response for 24 h. Re-sending the same body with "
            "the same key publishes nothing new and answers the first response again (header "
            "Idempotent-Replayed: true); the same key with another body is 422; while the "
            "first request is in progress, 409 with Retry-After. A request that failed (422, "
            "503) stores nothing: retry it with the same key. Events without an event_id get "
            "ids derived from the key and the body."
        ),
    ] = None,
) -> EventsAccepted | JSONResponse:
    """Validate the events against the event-type registry and publish them to Kafka.

    Answers 202 with the event ids once Kafka has acknowledged every event; 422 (and nothing
    published) if any event is invalid or names an unknown or inactive event type; 413 past
    the batch limit; 503 if Kafka does not acknowledge in time (retry with the returned ids,
    or the same Idempotency-Key). With an ``Idempotency-Key``, also 422 for a key used with
    another body and 409 while the key's first request is in progress.
    """
    events = body.events if isinstance(body, EventBatch) else [body]
    if len(events) > limits.max_batch_events:
        raise Problem(
            413,
            "Batch too large",
            f"a request carries at most {limits.max_batch_events} events, this one has "
            f"{len(events)}; split it",
            kind="batch-too-large",
        )
    for index, event in enumerate(events):
        if len(event.recipients) > limits.max_recipients:
            where = f"events[{index}]." if isinstance(body, EventBatch) else ""
            raise _invalid(
                f"{where}recipients: at most {limits.max_recipients} recipients per event, got "
                f"{len(event.recipients)}"
            )
    keyed = None
    if idempotency_key is not None:
        try:
            key = check_idempotency_key(idempotency_key)
        except ValueError as exc:
            raise _invalid(str(exc)) from None
        keyed = KeyedRequest(caller.name, key, request_hash(body))
    ids = assign_event_ids(events, keyed)
    idempotency.PURGER.maybe_purge(engine, limits.idempotency_ttl_s)
    # The claim is committed before anything else happens, so a concurrent request with the
    # same key sees it; the lookup and the Kafka wait come after.
    held = None
    if keyed is not None:
        claimed = idempotency.claim(
            engine, keyed, ttl_s=limits.idempotency_ttl_s, lock_timeout_s=limits.idempotency_lock_s
        )
        if isinstance(claimed, Replay):
            return JSONResponse(
                claimed.body, status_code=claimed.status, headers={REPLAYED_HEADER: "true"}
            )
        held = claimed
    try:
        codes = {event.event_type for event in events}
        check_event_types(codes, lookup_event_types(engine, codes))
        now = datetime.now(UTC)
        records = [
            Outgoing(
                topics.events.name,
                event_id,
                encode(SCHEMA, event_record(event, event_id, producer=caller.name, now=now)),
            )
            for event, event_id in zip(events, ids, strict=True)
        ]
        try:
            publisher.publish(records)
        except PublishError as exc:
            raise Problem(
                503,
                "Kafka unavailable",
                f"the events could not be published ({exc}); retry with the same event ids "
                "(or the same Idempotency-Key and body), which never notifies twice",
                kind="kafka-unavailable",
                headers={"Retry-After": "5"},
                event_ids=ids,
            ) from exc
    except BaseException:
        # Nothing is stored for a request that failed: the client may retry with the key.
        if held is not None:
            idempotency.release(engine, held)
        raise
    accepted = EventsAccepted(accepted=len(ids), event_ids=ids)
    if held is not None:
        idempotency.complete(engine, held, status.HTTP_202_ACCEPTED, accepted.model_dump())
    return accepted


def _invalid(detail: str) -> Problem:
    return Problem(422, "Request is not valid", detail, kind="validation-error")


def _plural(items: Sequence[str]) -> str:
    return "s" if len(items) > 1 else ""


def _quoted(items: Sequence[str]) -> str:
    return ", ".join(repr(item) for item in items)
