"""``DELETE /v1/users/{user_id}`` (erasure) and ``GET /v1/users/{user_id}/export`` (admin).

Erasure removes the user everywhere Herald keeps them (herald.userdata lists the tables):
the rows are deleted in one transaction, and before it commits, tombstones (null values) for
the user's key are produced to the compacted users and preferences topics and acknowledged by
Kafka. The router's tables drop the user on the tombstones (and its known devices with them);
events for the user still in flight are then refused as ``user.unknown``, with no send.
If Kafka does not acknowledge, nothing is deleted (503); if the commit fails after the
acknowledgement, repeating the DELETE completes it. A DELETE of a user Herald does not hold
(or no longer holds) is also 204: the tombstones are produced again and nothing is left.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import StreamingResponse

from herald.streaming import Outgoing
from herald.userdata import erase_rows, export_chunks
from herald.userrecords import record_lock
from herald.webapi import problem_responses
from services.ingest.admin import kafka_unavailable
from services.ingest.deps import ADMIN_RESPONSES, DbSession, Publish, Topics, UserPath, authorize
from services.ingest.preferences import read_preferences
from services.ingest.publisher import PublishError
from services.ingest.users import get_user

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1/users",
    tags=["users"],
    dependencies=[Depends(authorize)],
    responses=ADMIN_RESPONSES,
)


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(422, 503),
    summary="Erase a user",
)
def delete_user(
    user_id: UserPath, session: DbSession, publisher: Publish, topics: Topics
) -> Response:
    """Erase the user: every row Herald holds about them (contact data, preferences,
    endpoints, notifications, deliveries and their attempts, the send journal, held deliveries,
    known devices) and their records on the compacted users and preferences topics
    (tombstones). Returns once PostgreSQL is clean and Kafka acknowledged the tombstones.

    Idempotent: always ``204``, also for a user erased before or never created. ``503`` when
    Kafka did not acknowledge: nothing was deleted; repeat the DELETE.
    """
    tombstones = [
        Outgoing(topics.users.name, user_id, None),
        Outgoing(topics.preferences.name, user_id, None),
    ]
    # The lock of every write of this user's records: a PUT cannot publish between the
    # tombstones and the commit.
    with record_lock(session, "user", user_id), session.begin():
        counts = erase_rows(session.connection(), user_id)
        try:
            publisher.publish(tombstones)
        except PublishError as exc:
            raise kafka_unavailable(
                f"user {user_id!r} was not erased: Kafka did not acknowledge the "
                f"tombstones ({exc}); nothing was deleted, repeat this DELETE"
            ) from exc
    log.info("user erased", extra={"user_id": user_id, "rows": counts})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{user_id}/export",
    responses={
        200: {"content": {"application/json": {}}, "description": "The export"},
        **problem_responses(404, 422),
    },
    response_class=StreamingResponse,
    summary="Export everything Herald holds about a user",
)
def export_user(user_id: UserPath, session: DbSession, request: Request) -> StreamingResponse:
    """One JSON document: ``user`` (contact data), ``preferences``, ``endpoints`` (without
    their secrets), ``known_devices``, ``held_deliveries``, ``notifications`` (newest first,
    each with its ``deliveries`` and their ``attempts``) and ``deliveries_without_notification``
    (events the user got no notification of: every channel skipped, with why).

    Streamed a page of notifications at a time, so a user with 100,000 notifications does not
    load into memory. ``404`` for an unknown user."""
    preferences = read_preferences(session, user_id)  # 404 for an unknown user
    head = {
        "user_id": user_id,
        "exported_at": datetime.now(UTC),
        "user": get_user(user_id, session).model_dump(mode="json"),
        "preferences": preferences.model_dump(mode="json"),
    }
    session.close()
    engine = request.app.state.engine

    def body() -> Iterator[bytes]:
        # Its own connection: the request's is given back before the body is sent.
        with engine.connect() as connection:
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                for chunk in export_chunks(connection, user_id, head):
                    yield chunk.encode()

    # No user id in the file name: ids may hold quotes or characters a header cannot carry.
    return StreamingResponse(
        body(),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="herald-export.json"'},
    )
