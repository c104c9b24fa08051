"""The pure parts of ``Idempotency-Key`` (services/ingest/idempotency.py): the request hash,
the derived event ids, what a request does about a key already stored, the purge's pace."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import TypeAdapter
from sqlalchemy import Engine, create_engine

from services.ingest import idempotency
from services.ingest.events import EventsBody
from services.ingest.idempotency import (
    KeyedRequest,
    Purger,
    Stored,
    canonical_json,
    request_hash,
    verdict,
)
from services.ingest.settings import IngestSettings

BODY = TypeAdapter(EventsBody)
EVENT = {"event_type": "order.shipped", "recipients": ["u-1"], "context": {"order": "991"}}


def _hash(data: dict[str, Any]) -> str:
    return request_hash(BODY.validate_python(data))


# --- the request hash ---------------------------------------------------------------------


def test_canonical_json_sorts_keys_and_drops_spaces() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'


def test_request_hash_is_a_sha256_of_the_parsed_body() -> None:
    digest = _hash(EVENT)
    assert len(digest) == 64 and int(digest, 16) >= 0
    # What only differs in spelling is the same request.
    respelled = {
        "context": {"order": 991},
        "recipients": ["u-1"],
        "event_type": "order.shipped",
        "metadata": {},
    }
    assert _hash(respelled) == digest
    assert _hash({**EVENT, "occurred_at": "2024-05-01T14:00:00+02:00"}) == _hash(
        {**EVENT, "occurred_at": "2024-05-01T12:00:00Z"}
    )


@pytest.mark.parametrize(
    "other",
    [
        {**EVENT, "context": {"order": "992"}},
        {**EVENT, "recipients": ["u-2"]},
        {**EVENT, "recipients": ["u-1", "u-2"]},
        {**EVENT, "event_id": str(uuid.uuid4())},
        {"events": [EVENT]},  # a batch of one is another request than the event alone
    ],
)
def test_request_hash_differs_for_another_body(other: dict[str, Any]) -> None:
    assert _hash(other) != _hash(EVENT)


# --- derived event ids ----------------------------------------------------------------------


def test_keyed_event_ids_are_stable_uuid5s() -> None:
    keyed = KeyedRequest("http-ingest:ab12cd34ef56", "order-991", _hash(EVENT))
    first = keyed.event_id(0)
    assert uuid.UUID(first).version == 5
    assert KeyedRequest("http-ingest:ab12cd34ef56", "order-991", _hash(EVENT)).event_id(0) == first
    assert keyed.event_id(1) != first


@pytest.mark.parametrize(
    "other",
    [
        KeyedRequest("http-ingest:000000000000", "order-991", "h"),  # another API key
        KeyedRequest("http-ingest:ab12cd34ef56", "order-992", "h"),  # another key
        KeyedRequest("http-ingest:ab12cd34ef56", "order-991", "g"),  # another body
        # No separator trick makes two requests one.
        KeyedRequest("http-ingest:ab12cd34ef56", "order-991h", ""),
    ],
)
def test_keyed_event_ids_differ_with_caller_key_or_body(other: KeyedRequest) -> None:
    keyed = KeyedRequest("http-ingest:ab12cd34ef56", "order-991", "h")
    assert other.event_id(0) != keyed.event_id(0)


# --- a key already stored -------------------------------------------------------------------


def _stored(**fields: Any) -> Stored:
    values: dict[str, Any] = {
        "request_hash": "h",
        "claim_token": uuid.uuid4(),
        "response_status": None,
        "response_body": None,
        "expired": False,
        "stale": False,
        **fields,
    }
    return Stored(**values)


DONE = {"response_status": 202, "response_body": {"accepted": 1, "event_ids": ["e"]}}


@pytest.mark.parametrize(
    ("stored", "sent", "expected"),
    [
        (_stored(**DONE), "h", "replay"),
        (_stored(**DONE), "other", "reused"),
        (_stored(), "h", "in-use"),
        # Another body while the first is in progress, or after it crashed: still refused
        # (it may have published).
        (_stored(), "other", "reused"),
        (_stored(stale=True), "other", "reused"),
        (_stored(stale=True), "h", "take-over"),
        # Expired: as if never used, whatever it holds.
        (_stored(expired=True, **DONE), "h", "take-over"),
        (_stored(expired=True, **DONE), "other", "take-over"),
        (_stored(expired=True), "other", "take-over"),
    ],
)
def test_verdict(stored: Stored, sent: str, expected: str) -> None:
    assert verdict(stored, sent) == expected


# --- settings and the purge -----------------------------------------------------------------


def test_ttl_is_at_least_a_day_and_the_lock_timeout_follows_the_publish_timeout() -> None:
    settings = IngestSettings(publish_timeout_s=10)
    assert settings.idempotency_ttl_s == 86_400
    assert settings.idempotency_lock_s == 50
    assert IngestSettings(idempotency_lock_timeout_s=5).idempotency_lock_s == 5
    with pytest.raises(ValueError, match="86400"):
        IngestSettings(idempotency_ttl_s=3600)


def test_purger_runs_at_most_once_per_period_per_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Engine, float]] = []

    def purge(engine: Engine, ttl_s: float) -> int:
        calls.append((engine, ttl_s))
        return 0

    monkeypatch.setattr(idempotency, "purge_expired", purge)
    first, second = create_engine("sqlite://"), create_engine("sqlite://")
    purger = Purger(every_s=3600)
    thread = purger.maybe_purge(first, 86_400)
    assert thread is not None
    thread.join(5)
    assert calls == [(first, 86_400)]
    assert purger.maybe_purge(first, 86_400) is None  # not again within the period
    other = purger.maybe_purge(second, 86_400)  # another engine has its own period
    assert other is not None
    other.join(5)
    assert [engine for engine, _ in calls] == [first, second]
    again = Purger(every_s=0).maybe_purge(first, 86_400)
    assert again is not None
    again.join(5)
    assert len(calls) == 3
