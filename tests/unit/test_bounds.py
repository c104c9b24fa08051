"""Bounded records: ids of at most MAX_ID_LENGTH characters and at most MAX_RECIPIENTS
recipients, refused by the router's decoding of what anyone can write to Kafka."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from herald.errors import PermanentError
from herald.identity import MAX_ID_LENGTH, MAX_RECIPIENTS, check_id_length
from herald.serde import encode
from services.ingest.settings import IngestSettings
from services.router import routing
from tests.samples import EVENT, SAMPLES

LONG = "u" * (MAX_ID_LENGTH + 1)
LONGEST = "u" * MAX_ID_LENGTH


def event(**fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(EVENT), **fields}


def refused(record: dict[str, Any], full_name: str) -> PermanentError:
    with pytest.raises(PermanentError) as caught:
        routing.decode_input(encode(full_name, record), full_name)
    return caught.value


def test_check_id_length_names_the_id_and_shows_only_its_start() -> None:
    assert check_id_length(LONGEST, "user id") == LONGEST
    with pytest.raises(ValueError, match=r"user id 'u{40}…' has 256 characters; ids have 1 to 255"):
        check_id_length(LONG, "user id")
    with pytest.raises(ValueError, match="has 0 characters"):
        check_id_length("", "event id")


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"event_id": LONG}, "event_id"),
        ({"event_type": LONG}, "event_type"),
        ({"actor_id": LONG}, "actor_id"),
        ({"recipients": ["user-1", LONG]}, "recipient"),
        ({"event_id": ""}, "event_id"),
    ],
)
def test_an_event_with_an_invalid_id_is_poison(fields: dict[str, Any], what: str) -> None:
    error = refused(event(**fields), routing.EVENT)
    assert error.error_class == "record.invalid_id"
    assert error.message.startswith(what)


def test_ids_of_the_longest_length_pass() -> None:
    longest = event(event_type=LONGEST, actor_id=LONGEST, recipients=[LONGEST, ""])
    assert routing.decode_input(encode(routing.EVENT, longest), routing.EVENT) == longest


def test_an_event_naming_too_many_recipients_is_poison() -> None:
    many = [f"u{n}" for n in range(MAX_RECIPIENTS + 1)]
    error = refused(event(recipients=many), routing.EVENT)
    assert error.error_class == "record.too_many_recipients"
    assert str(MAX_RECIPIENTS) in error.message
    allowed = event(recipients=many[:MAX_RECIPIENTS])
    assert len(
        routing.decode_input(encode(routing.EVENT, allowed), routing.EVENT)["recipients"]
    ) == (MAX_RECIPIENTS)


def test_recipient_copies_users_preferences_and_types_are_bounded_too() -> None:
    copy_ = {"user_id": LONG, "event": event()}
    assert refused(copy_, routing.RECIPIENT_EVENT).error_class == "record.invalid_id"
    nested = {"user_id": "user-1", "event": event(event_id=LONG)}
    assert refused(nested, routing.RECIPIENT_EVENT).error_class == "record.invalid_id"
    user = {**SAMPLES[routing.USER], "user_id": LONG}
    assert refused(user, routing.USER).error_class == "record.invalid_id"
    prefs = {**SAMPLES[routing.PREFERENCES], "user_id": LONG}
    assert refused(prefs, routing.PREFERENCES).error_class == "record.invalid_id"
    event_type = {**SAMPLES[routing.EVENT_TYPE], "code": LONG}
    assert refused(event_type, routing.EVENT_TYPE).error_class == "record.invalid_id"


def test_ingest_never_allows_more_recipients_than_the_router() -> None:
    assert IngestSettings().max_recipients == MAX_RECIPIENTS
    with pytest.raises(ValueError):
        IngestSettings(max_recipients=MAX_RECIPIENTS + 1)
