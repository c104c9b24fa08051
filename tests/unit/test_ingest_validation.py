"""The ingest API's validation, as pure functions and pydantic models: no broker, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta, timezone

import pytest
from pydantic import ValidationError

from herald import templates
from herald.db import models
from herald.serde import decode, encode
from herald.webapi import Problem, describe_validation_errors, field_path
from services.ingest.event_types import (
    EventTypeCreate,
    EventTypeUpdate,
    event_type_record,
    resolve_templates,
)
from services.ingest.events import (
    EventBatch,
    EventIn,
    assign_event_ids,
    check_event_types,
    event_record,
)
from services.ingest.idempotency import KeyedRequest
from services.ingest.preferences import PreferencesIn, preferences_record
from services.ingest.users import UserIn
from services.ingest.validation import (
    CHANNEL_NAMES,
    E164,
    as_utc,
    check_event_type_code,
    check_idempotency_key,
    check_timezone,
    check_user_id,
    coerce_context,
    coerce_metadata,
    normalize_email,
    normalize_event_id,
    normalize_locale,
    normalize_phone,
    parse_hour_minute,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# --- phone numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("+14155550123", "+14155550123"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+1 (415) 555-0123", "+14155550123"),
        ("+49.151.1234.5678", "+4915112345678"),
        ("+123456789012345", "+123456789012345"),  # 15 digits: the most E.164 allows
    ],
)
def test_phone_numbers_are_normalised_to_e164(given: str, stored: str) -> None:
    assert normalize_phone(given) == stored


@pytest.mark.parametrize(
    "bad",
    ["4155550123", "+0155550123", "+1234567890123456", "+1 415 CALL ME", "", "+", "++14155550123"],
)
def test_phone_numbers_not_in_e164_are_refused_with_an_example(bad: str) -> None:
    with pytest.raises(ValueError, match=r"not an E.164 phone number.*\+14155550123"):
        normalize_phone(bad)


def test_phone_rule_is_the_databases_rule() -> None:
    # The API must refuse what the CHECK constraint would refuse (a 500 otherwise).
    assert f"'^{E164.pattern}$'" in models.PHONE_CHECK_SQL


# --- email ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("ada@example.com", "ada@example.com"),
        ("Ada.Lovelace+herald@Example.CO.UK", "Ada.Lovelace+herald@example.co.uk"),
        ("  ada@example.com ", "ada@example.com"),
        ("o'brien@xn--bcher-kva.example", "o'brien@xn--bcher-kva.example"),
    ],
)
def test_email_addresses_keep_their_local_part_and_lower_the_domain(
    given: str, stored: str
) -> None:
    assert normalize_email(given) == stored


@pytest.mark.parametrize(
    "bad",
    [
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "ada@@example.com",
        "ada lovelace@example.com",
        "ada@exa mple.com",
        "ada..l@example.com",
        "ada@-example.com",
        "a" * 65 + "@example.com",
    ],
)
def test_malformed_email_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid email address"):
        normalize_email(bad)


# --- codes, ids, zones, locales, times ------------------------------------------------------


@pytest.mark.parametrize("code", ["comment.created", "ab", "security.new_device", "a-b_c.9"])
def test_valid_event_type_codes(code: str) -> None:
    assert check_event_type_code(code) == code


@pytest.mark.parametrize(
    "code", ["a", "Comment.created", "1comment", "comment created", ".x", "a" * 65, "é.t"]
)
def test_invalid_event_type_codes_are_refused_with_the_rule(code: str) -> None:
    with pytest.raises(ValueError, match="not a valid event type code: use 2 to 64"):
        check_event_type_code(code)


def test_user_ids_are_printable_without_spaces() -> None:
    assert check_user_id("user-42@tenant:7") == "user-42@tenant:7"
    for bad in ("", "user 42", "user\t42", "user\x0042", "x" * 256):
        with pytest.raises(ValueError):
            check_user_id(bad)


def test_time_zones_must_be_iana_names() -> None:
    assert check_timezone("Europe/Paris") == "Europe/Paris"
    assert check_timezone("UTC") == "UTC"
    for bad in ("Mars/Olympus_Mons", "europe/paris", "../../etc/passwd", "+02:00", ""):
        with pytest.raises(ValueError, match="not a known IANA time zone"):
            check_timezone(bad)


def test_locales_are_language_tags() -> None:
    assert normalize_locale("fr_CA") == "fr-CA"
    assert normalize_locale("zh-Hant-TW") == "zh-Hant-TW"
    with pytest.raises(ValueError, match="not a language tag"):
        normalize_locale("english please")


def test_quiet_hours_are_hh_mm() -> None:
    assert parse_hour_minute("07:30") == time(7, 30)
    assert parse_hour_minute("23:59") == time(23, 59)
    for bad in ("7:30", "24:00", "12:60", "noon", "12:00:00"):
        with pytest.raises(ValueError, match="HH:MM"):
            parse_hour_minute(bad)


def test_channels_agree_with_templates_and_database() -> None:
    assert set(CHANNEL_NAMES) == set(templates.CHANNELS) == set(models.CHANNELS)


# --- context coercion -----------------------------------------------------------------------


def test_context_scalars_become_strings_as_json_writes_them() -> None:
    assert coerce_context(
        {
            "title": "Hi",
            "count": 3,
            "ratio": 2.5,
            "big": 10**20,
            "on": True,
            "off": False,
            "x": None,
        }
    ) == {
        "title": "Hi",
        "count": "3",
        "ratio": "2.5",
        "big": "100000000000000000000",
        "on": "true",
        "off": "false",
        "x": "",
    }


@pytest.mark.parametrize(("value", "kind"), [([1, 2], "JSON array"), ({"a": 1}, "JSON object")])
def test_context_refuses_nested_values_naming_the_key(value: object, kind: str) -> None:
    with pytest.raises(ValueError, match=f"value of 'items' is a {kind}"):
        coerce_context({"items": value})


def test_context_keys_must_not_be_empty() -> None:
    with pytest.raises(ValueError, match="keys must not be empty"):
        coerce_context({"": "x"})


def test_context_and_metadata_are_bounded() -> None:
    longest = {"k" * 128: "v" * 8192}
    assert coerce_context(longest) == longest
    for values, reason in (
        ({"k" * 129: "v"}, "context key 'kkkk"),
        ({"excerpt": "v" * 8193}, "context value of 'excerpt' has 8193 characters"),
        ({f"k{n}": n for n in range(65)}, "context has 65 entries; at most 64"),
        ({f"k{n}": "v" * 8000 for n in range(9)}, "at most 65536 in all"),
    ):
        with pytest.raises(ValueError, match=reason):
            coerce_context(values)
    assert coerce_metadata({"trace_id": "t" * 1024, "n": 3}) == {"trace_id": "t" * 1024, "n": "3"}
    with pytest.raises(ValueError, match="metadata value of 'trace_id' has 1025 characters"):
        coerce_metadata({"trace_id": "t" * 1025})
    with pytest.raises(ValueError, match="metadata has 33 entries"):
        coerce_metadata({f"k{n}": "v" for n in range(33)})


# --- event ids and the idempotency key ------------------------------------------------------


def test_idempotency_key_must_be_short_and_visible() -> None:
    assert check_idempotency_key(" order-991-shipped ") == "order-991-shipped"
    assert check_idempotency_key("x" * 255) == "x" * 255
    for bad in ("", "   ", "x" * 256, "tab\there", "nul\x00"):
        with pytest.raises(ValueError, match="Idempotency-Key"):
            check_idempotency_key(bad)


def test_event_ids_are_canonical_uuids() -> None:
    upper = "0F8FAD5B-D9CB-469F-A165-70867728950E"
    assert normalize_event_id(upper) == upper.lower()
    with pytest.raises(ValueError, match="not a UUID"):
        normalize_event_id("evt-1")


def _event(**fields: object) -> EventIn:
    return EventIn.model_validate({"event_type": "comment.created", "recipients": ["u1"], **fields})


def test_assign_event_ids_keeps_given_ids_and_generates_the_rest() -> None:
    given = str(uuid.uuid4())
    ids = assign_event_ids([_event(event_id=given), _event()])
    assert ids[0] == given
    assert uuid.UUID(ids[1]).version == 4
    assert assign_event_ids([_event()]) != assign_event_ids([_event()])


def test_assign_event_ids_derives_the_ids_of_a_keyed_request() -> None:
    given = str(uuid.uuid4())
    keyed = KeyedRequest("http-ingest:ab12cd34ef56", "k-1", "0" * 64)
    # A batch may carry a key: each event without an id gets one derived from its position;
    # an event with its own id keeps it.
    ids = assign_event_ids([_event(), _event(event_id=given), _event()], keyed)
    assert ids == [keyed.event_id(0), given, keyed.event_id(2)]
    assert all(uuid.UUID(i).version == 5 for i in (ids[0], ids[2]))
    # Sending it again derives the same ids: the router deduplicates them.
    assert assign_event_ids([_event(), _event(event_id=given), _event()], keyed) == ids


def test_assign_event_ids_refuses_a_repeated_id() -> None:
    same = str(uuid.uuid4())
    with pytest.raises(Problem, match=r"events\[1\].event_id .* appears twice"):
        assign_event_ids([_event(event_id=same), _event(event_id=same)])
    keyed = KeyedRequest("c", "k", "h")
    with pytest.raises(Problem, match=r"events\[1\].event_id .* appears twice") as copied:
        assign_event_ids([_event(), _event(event_id=keyed.event_id(0))], keyed)
    assert copied.value.status == 422


# --- events ---------------------------------------------------------------------------------


def test_check_event_types_names_unknown_then_inactive_codes() -> None:
    registry = {"comment.created": True, "old.thing": False}
    check_event_types(["comment.created"], registry)
    with pytest.raises(Problem) as unknown:
        check_event_types(["comment.created", "nope.one", "nope.two"], registry)
    assert unknown.value.status == 422
    assert "'nope.one', 'nope.two'" in unknown.value.detail
    assert unknown.value.extensions["event_types"] == ["nope.one", "nope.two"]
    with pytest.raises(Problem) as inactive:
        check_event_types(["old.thing"], registry)
    assert "'old.thing' is inactive" in inactive.value.detail
    assert "PUT /v1/event-types/old.thing" in inactive.value.detail


def test_event_record_is_a_valid_avro_event() -> None:
    event = _event(
        actor_id="u0",
        context={"n": 2, "flag": True},
        metadata={"trace": "abc"},
        occurred_at="2024-05-01T14:00:00+02:00",
    )
    record = event_record(event, "0f8fad5b-d9cb-469f-a165-70867728950e", producer="p", now=NOW)
    decoded = decode(encode("herald.Event", record))
    assert decoded["context"] == {"n": "2", "flag": "true"}
    assert decoded["occurred_at"] == NOW  # 14:00+02:00 is 12:00 UTC
    assert decoded["producer"] == "p"
    assert decoded["recipients"] == ["u1"]
    assert decoded["actor_id"] == "u0"


def test_event_without_time_occurs_now_and_naive_times_are_utc() -> None:
    record = event_record(_event(), "0f8fad5b-d9cb-469f-a165-70867728950e", producer="p", now=NOW)
    assert record["occurred_at"] == NOW
    assert as_utc(datetime(2024, 5, 1, 12, 0)) == NOW
    assert as_utc(datetime(2024, 5, 1, 7, 0, tzinfo=timezone(timedelta(hours=-5)))) == NOW


def test_event_model_refuses_unknown_fields_and_empty_recipients() -> None:
    with pytest.raises(ValidationError) as caught:
        EventIn.model_validate({"event_type": "a.b", "recipients": [], "recipient": "u1"})
    fields = {e["field"] for e in describe_validation_errors(caught.value.errors())}
    assert fields == {"recipients", "recipient"}


def test_batch_errors_name_the_event_index() -> None:
    with pytest.raises(ValidationError) as caught:
        EventBatch.model_validate(
            {"events": [{"event_type": "a.b", "recipients": ["u"]}, {"recipients": ["u"]}]}
        )
    assert describe_validation_errors(caught.value.errors()) == [
        {"field": "events[1].event_type", "message": "is required"}
    ]


# --- event types ----------------------------------------------------------------------------


def test_event_type_templates_are_validated_per_channel() -> None:
    with pytest.raises(ValidationError) as caught:
        EventTypeCreate.model_validate(
            {
                "code": "a.b",
                "name": "A",
                "templates": {"inapp": {"title": "ok", "body": "Hello {{ name"}},
            }
        )
    [error] = describe_validation_errors(caught.value.errors())
    assert error["field"] == "templates.inapp.body"
    assert error["message"].startswith("invalid template:")


def test_event_type_templates_must_match_channels_and_html_is_email_only() -> None:
    with pytest.raises(ValidationError, match="'sms' template but channels"):
        EventTypeCreate.model_validate(
            {"code": "a.b", "name": "A", "channels": ["inapp"], "templates": {"sms": {"body": "x"}}}
        )
    with pytest.raises(ValidationError, match="only the email channel uses html"):
        EventTypeCreate.model_validate(
            {"code": "a.b", "name": "A", "templates": {"inapp": {"body": "x", "html": "<p>"}}}
        )
    with pytest.raises(ValidationError, match="'sms', 'webhook' or 'slack'"):
        EventTypeCreate.model_validate({"code": "a.b", "name": "A", "channels": ["push"]})


def test_templates_are_generated_when_absent() -> None:
    fields = EventTypeCreate.model_validate(
        {
            "code": "a.b",
            "name": "Order shipped",
            "channels": ["email", "sms", "email"],
            "context_keys": ["order_id", "eta"],
        }
    )
    assert fields.channels == ["email", "sms"]
    resolved = resolve_templates(fields, None)
    assert resolved == templates.generate_templates(
        "Order shipped", ["order_id", "eta"], ["email", "sms"]
    )
    assert "{{ order_id }}" in str(resolved["email"]["body"])
    assert resolved["email"]["html"] is not None


def test_given_templates_win_then_stored_ones_then_generated() -> None:
    stored = {"sms": {"title": "", "body": "stored sms", "html": None}}
    fields = EventTypeUpdate.model_validate(
        {
            "name": "N",
            "channels": ["inapp", "email", "sms"],
            "templates": {"inapp": {"title": "T", "body": "given"}},
        }
    )
    resolved = resolve_templates(fields, stored)
    assert resolved["inapp"] == {"title": "T", "body": "given", "html": None}
    assert resolved["sms"]["body"] == "stored sms"
    assert resolved["email"] == templates.generate_templates("N", [], ["email"])["email"]
    # context_keys asks for regeneration: the stored sms template is replaced.
    regenerate = fields.model_copy(update={"context_keys": ["who"]})
    assert resolve_templates(regenerate, stored)["sms"]["body"] == "N: {{ who }}"


def test_event_type_record_is_a_valid_avro_event_type() -> None:
    row = {
        "code": "a.b",
        "name": "A",
        "description": None,
        "default_enabled": True,
        "is_active": False,
        "mandatory": False,
        "urgent": True,
        "channels": ["email"],
        "templates": {"email": {"title": "t", "body": "b"}},
        "updated_at": NOW,
    }
    decoded = decode(encode("herald.EventType", event_type_record(row)))
    assert decoded["description"] == ""
    assert decoded["templates"] == {"email": {"title": "t", "body": "b", "html": None}}
    assert decoded["is_active"] is False


# --- users and preferences ------------------------------------------------------------------


def test_user_model_reports_every_bad_field_readably() -> None:
    with pytest.raises(ValidationError) as caught:
        UserIn.model_validate({"email": "nope", "phone": "555", "timezone": "Nowhere/City"})
    described = {
        e["field"]: e["message"] for e in describe_validation_errors(caught.value.errors())
    }
    assert described.keys() == {"email", "phone", "timezone"}
    assert described["phone"].startswith("'555' is not an E.164 phone number")
    assert not any(m.startswith("Value error") for m in described.values())


def test_preferences_need_both_ends_of_quiet_hours() -> None:
    with pytest.raises(ValidationError, match="need both"):
        PreferencesIn.model_validate({"quiet_hours_start": "22:00"})
    with pytest.raises(ValidationError, match="equals"):
        PreferencesIn.model_validate({"quiet_hours_start": "22:00", "quiet_hours_end": "22:00"})
    prefs = PreferencesIn.model_validate(
        {
            "quiet_hours_start": "22:00",
            "quiet_hours_end": "07:00",
            "event_overrides": {"a.b": {"channels": ["sms", "sms"]}},
        }
    )
    assert prefs.event_overrides["a.b"].channels == ["sms"]


def test_text_postgresql_cannot_store_is_refused() -> None:
    # NUL characters: PostgreSQL's text and jsonb cannot hold them (found by the API fuzz run).
    with pytest.raises(ValidationError) as caught:
        UserIn.model_validate({"display_name": "Ada\x00"})
    assert describe_validation_errors(caught.value.errors()) == [
        {"field": "display_name", "message": "must not contain NUL characters (\\u0000)"}
    ]
    for fields in (
        {"name": "New\x00comment"},
        {"name": "x", "description": "\x00"},
        {"name": "x", "channels": ["sms"], "templates": {"sms": {"body": "hi \x00"}}},
    ):
        with pytest.raises(ValidationError, match="NUL"):
            EventTypeUpdate.model_validate(fields)
    assert UserIn.model_validate({"display_name": "Ada \u00e9"}).display_name == "Ada \u00e9"


@pytest.mark.parametrize("when", [0.5, 1714563600, "1714563600", "-1.5e3", " 7 "])
def test_occurred_at_is_iso_8601_never_a_unix_timestamp(when: object) -> None:
    event = {"event_type": "a.b", "recipients": ["u"], "occurred_at": when}
    with pytest.raises(ValidationError, match="ISO 8601"):
        EventIn.model_validate(event)
    event["occurred_at"] = "2024-05-01T14:00:00+02:00"
    assert EventIn.model_validate(event).occurred_at == datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_switches_are_json_booleans_not_numbers() -> None:
    # pydantic's lax mode read 0 and 1 as booleans; the schema says boolean (fuzz run).
    with pytest.raises(ValidationError, match="boolean"):
        EventTypeCreate.model_validate({"code": "a0", "name": "0", "is_active": 0})
    with pytest.raises(ValidationError, match="boolean"):
        PreferencesIn.model_validate({"sms_enabled": "false"})
    with pytest.raises(ValidationError, match="boolean"):
        PreferencesIn.model_validate({"event_overrides": {"a.b": {"enabled": 1}}})
    assert PreferencesIn.model_validate({"sms_enabled": False}).sms_enabled is False


def test_preference_overrides_name_well_formed_event_types() -> None:
    with pytest.raises(ValidationError, match="not a valid event type code"):
        PreferencesIn.model_validate({"event_overrides": {"Bad Code\x00": {"enabled": False}}})


def test_preferences_record_defaults_and_encodes() -> None:
    defaults = preferences_record("u1", None, [], now=NOW)
    assert defaults["inapp_enabled"] and defaults["email_enabled"] and defaults["sms_enabled"]
    row = {
        "inapp_enabled": True,
        "email_enabled": False,
        "sms_enabled": True,
        "webhook_enabled": False,
        "slack_enabled": True,
        "quiet_hours_start": time(22, 0),
        "quiet_hours_end": time(7, 30),
        "updated_at": NOW,
    }
    overrides = [{"event_type_code": "a.b", "enabled": False, "channels": None}]
    decoded = decode(
        encode("herald.Preferences", preferences_record("u1", row, overrides, now=NOW))
    )
    assert decoded["quiet_hours_start"] == "22:00"
    assert decoded["quiet_hours_end"] == "07:30"
    assert (decoded["webhook_enabled"], decoded["slack_enabled"]) == (False, True)
    assert decoded["event_overrides"] == {"a.b": {"enabled": False, "channels": None}}


# --- problem details helpers ----------------------------------------------------------------


def test_field_paths_drop_request_parts_and_union_tags() -> None:
    assert (
        field_path(("body", "<batch>", "events", 2, "recipients", 0)) == "events[2].recipients[0]"
    )
    assert field_path(("body", "<event>", "event_type")) == "event_type"
    assert field_path(("path", "user_id")) == "user_id"
    assert field_path(("body",)) == "body"
