"""The weekly summary: each user's unread in-app notifications of the past week, as one
``digest.weekly`` event per user on ``herald.events.v1``; the normal pipeline delivers it.

The router runs :func:`run_digest` on a crontab (``ROUTER_DIGEST_CRON``, Mondays 08:00 UTC by
default); ``herald digest run --now`` runs it by hand. One database query per run (not per
user or event). The event id is a uuid5 of (user, ISO week), so a second run in the same week
makes the same events, which the pipeline deduplicates: nobody gets two digests a week.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from herald.db.engine import search_path_options
from herald.identity import HERALD_NAMESPACE
from herald.producer import AckedProducer
from herald.seed import DIGEST_WEEKLY
from herald.serde import encode
from herald.settings import Settings
from herald.streaming import Outgoing, producer_config
from schemas import CATALOGUE

#: How far back a digest looks.
WINDOW = timedelta(days=7)
#: How many titles a digest lists (the count covers them all).
MAX_TITLES = 5
#: Longest title a digest lists, cut with an ellipsis past it: a title is a rendered template
#: (up to a million characters), and the digest's ``titles`` context value must stay within
#: herald.bounds.CONTEXT (8,192 characters), or the router would park the digest.
MAX_TITLE_CHARS = 1_000

# Digests are notifications too (they land in the inbox); never summarise a summary.
_UNREAD_SQL = """
select user_id, title, created_at from notification
where not is_read and created_at >= %s and created_at < %s and event_type <> %s
  and (%s::text[] is null or user_id = any(%s::text[]))
order by user_id, created_at desc
"""


@dataclass(frozen=True)
class UserDigest:
    """One user's unread notifications of the week: how many, and the newest titles."""

    user_id: str
    count: int
    titles: tuple[str, ...]


def iso_week(now: datetime) -> str:
    """The ISO week of ``now`` (in UTC) as ``YYYY-Www``, e.g. ``2026-W48``."""
    year, week, _ = now.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def digest_event_id(user_id: str, week: str) -> str:
    """The event id of a user's digest for an ISO week: the same on every run that week."""
    return str(uuid.uuid5(HERALD_NAMESPACE, f"{DIGEST_WEEKLY}:{week}:{user_id}"))


def group_unread(
    rows: Iterable[tuple[str, str, Any]], max_titles: int = MAX_TITLES
) -> list[UserDigest]:
    """Group ``(user_id, title, created_at)`` rows, sorted by user then newest first, into one
    digest per user: the count of all rows and the first ``max_titles`` titles."""
    digests: list[UserDigest] = []
    current: str | None = None
    count = 0
    titles: list[str] = []
    for user_id, title, _created_at in rows:
        if user_id != current:
            if current is not None:
                digests.append(UserDigest(current, count, tuple(titles)))
            current, count, titles = user_id, 0, []
        count += 1
        if len(titles) < max_titles:
            titles.append(title)
    if current is not None:
        digests.append(UserDigest(current, count, tuple(titles)))
    return digests


def _cut(title: str) -> str:
    return title if len(title) <= MAX_TITLE_CHARS else f"{title[: MAX_TITLE_CHARS - 1]}…"


def digest_event(digest: UserDigest, now: datetime) -> dict[str, Any]:
    """The ``herald.Event`` record (a ``digest.weekly`` event) for one user's digest."""
    week = iso_week(now)
    more = digest.count - len(digest.titles)
    lines = [f"- {_cut(title)}" for title in digest.titles]
    if more > 0:
        lines.append(f"... and {more} more")
    return {
        "event_id": digest_event_id(digest.user_id, week),
        "event_type": DIGEST_WEEKLY,
        "occurred_at": now,
        "producer": "herald-digest",
        "actor_id": None,
        "recipients": [digest.user_id],
        "context": {
            "count": str(digest.count),
            "plural": "" if digest.count == 1 else "s",
            "week": week,
            "titles": "\n".join(lines),
        },
        "metadata": {"digest_week": week},
    }


def unread_since(
    settings: Settings, now: datetime, user_ids: Sequence[str] | None = None
) -> list[UserDigest]:
    """One query: the unread notifications of the week before ``now``, grouped by user
    (only ``user_ids``' when given)."""
    db = settings.database
    users = list(user_ids) if user_ids is not None else None
    with psycopg.connect(db.libpq_url, options=search_path_options(db.database_schema)) as conn:
        rows = conn.execute(
            _UNREAD_SQL, (now - WINDOW, now, DIGEST_WEEKLY, users, users)
        ).fetchall()
    return group_unread(rows)


def run_digest(
    settings: Settings, now: datetime | None = None, user_ids: Sequence[str] | None = None
) -> list[UserDigest]:
    """Publish this week's digest event of every user with unread notifications (or only of
    ``user_ids``); returns the digests published. Raises ``RuntimeError`` if Kafka does not
    acknowledge them."""
    now = now or datetime.now(UTC)
    digests = unread_since(settings, now, user_ids)
    if not digests:
        return []
    topic = CATALOGUE.with_prefix(settings.kafka.topic_prefix).events.name
    events = [digest_event(digest, now) for digest in digests]
    records = [
        Outgoing(topic, event["event_id"], encode("herald.Event", event)) for event in events
    ]
    refused = AckedProducer(producer_config(settings.kafka)).deliver(records)
    if refused:
        raise RuntimeError(
            f"{len(refused)} digest events not acknowledged by Kafka: {refused[0].error}"
        )
    return digests
