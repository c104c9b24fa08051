"""Bounded records: ids of at most MAX_ID_LENGTH characters, at most MAX_RECIPIENTS
recipients, and context, metadata, user fields and templates within herald.bounds, refused by
the router's decoding of what anyone can write to Kafka."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from herald.bounds import CONTEXT, MAX_KEY_LENGTH, METADATA, check_map
from herald.errors import PermanentError
from herald.identity import MAX_ID_LENGTH, MAX_RECIPIENTS, check_id_length
from herald.serde import encode
from herald.templates import MAX_SOURCE_CHARS
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


def test_check_map_names_the_field_and_the_key() -> None:
    check_map({"k" * MAX_KEY_LENGTH: "v" * CONTEXT.max_value_length}, CONTEXT)
    with pytest.raises(ValueError, match=r"context key 'k{40}…' has 129 characters"):
        check_map({"k" * 129: "v"}, CONTEXT)
    with pytest.raises(ValueError, match="metadata value of 'trace' has 1025 characters"):
        check_map({"trace": "t" * 1025}, METADATA)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"context": {"excerpt": "x" * 8193}}, "context value of 'excerpt' has 8193 characters"),
        ({"context": {"k" * 129: "x"}}, "context key"),
        ({"context": {f"k{n}": "" for n in range(65)}}, "context has 65 entries"),
        ({"context": {f"k{n}": "x" * 8000 for n in range(9)}}, "at most 65536 in all"),
        ({"metadata": {"trace": "t" * 1025}}, "metadata value of 'trace'"),
        ({"metadata": {f"k{n}": "" for n in range(33)}}, "metadata has 33 entries"),
        ({"producer": "p" * (MAX_ID_LENGTH + 1)}, "producer has 256 characters"),
    ],
)
def test_an_event_with_an_over_long_string_is_poison(fields: dict[str, Any], reason: str) -> None:
    error = refused(event(**fields), routing.EVENT)
    assert error.error_class == "record.too_long"
    assert reason in error.message
    nested = {"user_id": "user-1", "event": event(**fields)}
    assert refused(nested, routing.RECIPIENT_EVENT).error_class == "record.too_long"


def test_strings_at_their_limits_pass() -> None:
    context = {f"k{n:03}": "x" * 1000 for n in range(64)}  # 64 entries, 64,256 characters
    metadata = {"k" * MAX_KEY_LENGTH: "t" * 1024}
    fine = event(context=context, metadata=metadata, producer="p" * MAX_ID_LENGTH)
    assert routing.decode_input(encode(routing.EVENT, fine), routing.EVENT) == fine


def test_users_preferences_and_event_types_are_bounded_too() -> None:
    user = {**SAMPLES[routing.USER], "display_name": "d" * (MAX_ID_LENGTH + 1)}
    error = refused(user, routing.USER)
    assert error.error_class == "record.too_long" and error.message.startswith("display_name")
    prefs = {**SAMPLES[routing.PREFERENCES], "event_overrides": {LONG: {"enabled": False}}}
    assert refused(prefs, routing.PREFERENCES).error_class == "record.invalid_id"
    templates = {"inapp": {"title": "", "body": "x" * (MAX_SOURCE_CHARS + 1), "html": None}}
    event_type = {**SAMPLES[routing.EVENT_TYPE], "templates": templates}
    error = refused(event_type, routing.EVENT_TYPE)
    assert error.error_class == "record.too_long"
    assert error.message.startswith("the inapp body template has 100001 characters")
