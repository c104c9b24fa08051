"""The router's pure decisions (services/router/routing.py): no broker, no tables."""

from __future__ import annotations

import copy
import os
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import pytest
from fastavro import schemaless_writer

from herald.errors import PermanentError
from herald.identity import delivery_id, notification_id
from herald.serde import RegisteredSchema, decode, encode
from schemas import CATALOGUE, HISTORY_DIR
from services.router import routing
from tests.samples import EVENT, SAMPLES, WHEN

NOW = datetime(2024, 5, 1, 12, 31, tzinfo=UTC)


def event_type(**fields: Any) -> dict[str, Any]:
    base = copy.deepcopy(SAMPLES["herald.EventType"])
    base.update(
        channels=["inapp", "email", "sms"],
        templates={
            "inapp": {"title": "New comment on {{ post_title }}", "body": "{{ excerpt }}"},
            "email": {
                "title": "Re: {{ post_title }}",
                "body": "Hi {{ display_name }}, someone wrote: {{ excerpt }}",
                "html": "<p>{{ excerpt }}</p>",
            },
            "sms": {"title": "ignored", "body": "Comment on {{ post_title }}"},
        },
    )
    base.update(fields)
    return base


def user(**fields: Any) -> dict[str, Any]:
    return {**SAMPLES["herald.User"], **fields}


def prefs(**fields: Any) -> dict[str, Any]:
    return {**routing.default_preferences("user-42"), "updated_at": WHEN, **fields}


def recipient(user_id: str = "user-42", **context: str) -> dict[str, Any]:
    event = copy.deepcopy(EVENT)
    event["context"] = {"post_title": "Kafka at scale", "excerpt": "Nice post!", **context}
    return {"user_id": user_id, "event": event}


# --- choose_channels ----------------------------------------------------------------------


def test_everything_on_by_default_and_without_a_preferences_record() -> None:
    expected = {"inapp": None, "email": None, "sms": None}
    assert routing.choose_channels(event_type(), prefs(), user()) == expected
    assert routing.choose_channels(event_type(), None, user()) == expected


def test_channel_switches_skip_with_a_readable_reason() -> None:
    choices = routing.choose_channels(
        event_type(), prefs(email_enabled=False, sms_enabled=False), user()
    )
    assert choices == {
        "inapp": None,
        "email": "email disabled by the user's preferences",
        "sms": "SMS disabled by the user's preferences",
    }
    choices = routing.choose_channels(event_type(), prefs(inapp_enabled=False), user())
    assert choices["inapp"] == "in-app disabled by the user's preferences"
    assert choices["email"] is None and choices["sms"] is None


def test_an_override_turning_the_type_off_skips_every_channel() -> None:
    overrides = {"comment.created": {"enabled": False, "channels": None}}
    choices = routing.choose_channels(event_type(), prefs(event_overrides=overrides), user())
    assert set(choices) == {"inapp", "email", "sms"}
    for reason in choices.values():
        assert reason is not None and "turned off 'comment.created'" in reason
    # An override for another type changes nothing.
    other = {"newsletter.sent": {"enabled": False, "channels": None}}
    assert set(routing.choose_channels(event_type(), prefs(event_overrides=other)).values()) == {
        None
    }


def test_an_override_channel_list_picks_channels_of_the_type_only() -> None:
    overrides = {"comment.created": {"enabled": True, "channels": ["email", "push"]}}
    choices = routing.choose_channels(event_type(), prefs(event_overrides=overrides), user())
    assert choices["email"] is None
    assert choices["inapp"] == "the user's preferences for 'comment.created' do not include in-app"
    assert choices["sms"] == "the user's preferences for 'comment.created' do not include SMS"
    assert "push" not in choices  # a channel the type does not use is never added


def test_switches_still_apply_to_channels_an_override_picks() -> None:
    overrides = {"comment.created": {"enabled": True, "channels": ["email"]}}
    choices = routing.choose_channels(
        event_type(), prefs(email_enabled=False, event_overrides=overrides), user()
    )
    assert choices["email"] == "email disabled by the user's preferences"


def test_a_type_off_by_default_needs_an_opt_in() -> None:
    off = event_type(default_enabled=False)
    for reason in routing.choose_channels(off, prefs(), user()).values():
        assert reason == "'comment.created' is off by default and the user has not turned it on"
    assert set(routing.choose_channels(off, None, user()).values()) != {None}

    opted_in = {"comment.created": {"enabled": True, "channels": None}}
    assert set(routing.choose_channels(off, prefs(event_overrides=opted_in)).values()) == {None}
    some = {"comment.created": {"enabled": True, "channels": ["inapp"]}}
    choices = routing.choose_channels(off, prefs(event_overrides=some), user())
    assert choices["inapp"] is None and choices["email"] and choices["sms"]


def test_a_mandatory_type_ignores_opt_outs_but_still_needs_an_address() -> None:
    mandatory = event_type(mandatory=True, default_enabled=False)
    opted_out = prefs(
        inapp_enabled=False,
        email_enabled=False,
        sms_enabled=False,
        event_overrides={"comment.created": {"enabled": False, "channels": None}},
    )
    assert set(routing.choose_channels(mandatory, opted_out, user()).values()) == {None}
    choices = routing.choose_channels(mandatory, opted_out, user(phone=None))
    assert choices == {"inapp": None, "email": None, "sms": "user has no phone number"}


def test_a_missing_address_skips_the_channel() -> None:
    choices = routing.choose_channels(event_type(), prefs(), user(email=None, phone=""))
    assert choices == {
        "inapp": None,
        "email": "user has no email address",
        "sms": "user has no phone number",
    }
    # The preference reason wins over the address reason: it is the user's own choice.
    choices = routing.choose_channels(event_type(), prefs(email_enabled=False), user(email=None))
    assert choices["email"] == "email disabled by the user's preferences"


def test_channels_come_from_the_type_in_its_order_unknown_ones_ignored() -> None:
    choices = routing.choose_channels(event_type(channels=["sms", "pigeon", "inapp", "sms"]), None)
    assert list(choices) == ["sms", "inapp"]


# --- stage 1 -----------------------------------------------------------------------------


def test_expand_leaves_out_the_actor_and_duplicates() -> None:
    event = {**EVENT, "actor_id": "u1", "recipients": ["u2", "u1", "u3", "u2", "", "u4", "u3"]}
    expanded = routing.expand(event)
    assert [r["user_id"] for r in expanded] == ["u2", "u3", "u4"]
    # Each copy is the event addressed to its own recipient only.
    assert all(r["event"] == {**event, "recipients": [r["user_id"]]} for r in expanded)
    assert routing.expand({**EVENT, "recipients": []}) == []
    assert routing.expand({**EVENT, "actor_id": "u1", "recipients": ["u1"]}) == []
    no_actor = routing.expand({**EVENT, "actor_id": None, "recipients": ["u1", "u1"]})
    assert [r["user_id"] for r in no_actor] == ["u1"]


def test_recipient_outputs_are_keyed_by_user_on_the_recipients_topic() -> None:
    catalogue = CATALOGUE.with_prefix("t.")
    event = {**EVENT, "actor_id": "user-17", "recipients": ["user-42", "user-17", "user-43"]}
    out = routing.recipient_outputs(event, catalogue)
    assert [o.topic for o in out] == [catalogue.recipients.name] * 2
    assert [o.key for o in out] == [b"user-42", b"user-43"]
    assert decode(out[0].value or b"") == {
        "user_id": "user-42",
        "event": {**event, "recipients": ["user-42"]},
    }


def test_fan_out_is_linear_in_the_recipient_count() -> None:
    """Each recipient's record has the same size whatever the event's recipient count: the
    bytes of 10,000 copies are 10 times those of 1,000 (copying the whole list into each copy
    made them 100 times, about 1.4 GB here)."""

    def total_bytes(count: int) -> int:
        event = {**EVENT, "actor_id": None, "recipients": [f"user-{n:06}" for n in range(count)]}
        out = routing.recipient_outputs(event, CATALOGUE)
        assert len(out) == count
        return sum(len(o.value or b"") for o in out)

    small, large = total_bytes(1_000), total_bytes(10_000)
    assert large == 10 * small
    assert large < 10_000 * 1_000  # under 1 KB per recipient


def test_check_event_type_refuses_unknown_and_inactive_types() -> None:
    with pytest.raises(PermanentError) as unknown:
        routing.check_event_type(EVENT, None)
    assert unknown.value.error_class == "event_type.unknown"
    assert "comment.created" in unknown.value.message
    with pytest.raises(PermanentError) as inactive:
        routing.check_event_type(EVENT, event_type(is_active=False))
    assert inactive.value.error_class == "event_type.inactive"
    active = event_type()
    assert routing.check_event_type(EVENT, active) is active


# --- decoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error_class"),
    [
        (b"plain text, not avro", "serde.not_avro"),
        (None, "serde.not_avro"),
        (b"", "serde.not_avro"),
        (b"\xc3\x01\x00", "serde.not_avro"),
        (b"\xc3\x01" + os.urandom(8), "serde.unknown_schema"),
        (encode("herald.User", SAMPLES["herald.User"]), "serde.wrong_schema"),
        (encode("herald.Event", EVENT)[:-5], "serde.corrupt"),
        (encode("herald.Event", EVENT) + b"\x00\x00", "serde.corrupt"),
    ],
)
def test_poison_input_is_a_typed_permanent_error(data: bytes | None, error_class: str) -> None:
    with pytest.raises(PermanentError) as caught:
        routing.decode_input(data, routing.EVENT)
    assert caught.value.error_class == error_class
    assert caught.value.message


def test_decode_input_reads_current_and_older_writers() -> None:
    assert routing.decode_input(encode("herald.Event", EVENT), routing.EVENT) == EVENT
    v0 = RegisteredSchema.from_file(HISTORY_DIR / "Event.v0.avsc")
    fields = {field["name"] for field in v0.schema["fields"]}
    body = BytesIO()
    schemaless_writer(body, v0.parsed, {k: v for k, v in EVENT.items() if k in fields})
    record = routing.decode_input(v0.header + body.getvalue(), routing.EVENT)
    assert record["event_id"] == EVENT["event_id"]
    assert set(record) == set(EVENT)  # fields v0 lacked get their defaults


# --- route ---------------------------------------------------------------------------------


def test_route_renders_every_channel_from_its_template() -> None:
    routed = routing.route(recipient(), user(), prefs(), event_type(), NOW)
    nid = notification_id(EVENT["event_id"], "user-42")
    assert routed.notification == {
        "notification_id": nid,
        "event_id": EVENT["event_id"],
        "user_id": "user-42",
        "event_type": "comment.created",
        "title": "New comment on Kafka at scale",
        "message": "Nice post!",
        "channels": ["inapp", "email", "sms"],
        "metadata": EVENT["metadata"],
        "created_at": NOW,
    }
    by_channel = {d["channel"]: d for d in routed.deliveries}
    assert by_channel["email"] == {
        "delivery_id": delivery_id(nid, "email"),
        "notification_id": nid,
        "event_id": EVENT["event_id"],
        "user_id": "user-42",
        "event_type": "comment.created",
        "channel": "email",
        "destination": "ada@example.com",
        "subject": "Re: Kafka at scale",
        "body_text": "Hi Ada, someone wrote: Nice post!",
        "body_html": "<p>Nice post!</p>",
        "locale": "en-GB",
        "created_at": NOW,
    }
    assert by_channel["sms"]["destination"] == "+14155550123"
    assert by_channel["sms"]["subject"] == ""  # sms has no subject
    assert by_channel["sms"]["body_text"] == "Comment on Kafka at scale"
    assert by_channel["inapp"]["destination"] == "user-42"
    assert by_channel["inapp"]["body_html"] is None
    # No pending for in-app: inapp_store's `delivered` is its first status.
    assert [(s["channel"], s["status"]) for s in routed.statuses] == [
        ("email", "pending"),
        ("sms", "pending"),
    ]
    for status in routed.statuses:
        assert status["delivery_id"] == delivery_id(nid, status["channel"])
        assert status["error_message"] is None and status["occurred_at"] == NOW


def test_route_reports_skipped_channels_with_their_reason() -> None:
    routed = routing.route(
        recipient(), user(phone=None), prefs(email_enabled=False), event_type(), NOW
    )
    assert [d["channel"] for d in routed.deliveries] == ["inapp"]
    assert routed.notification is not None and routed.notification["channels"] == ["inapp"]
    statuses = {s["channel"]: s for s in routed.statuses}
    assert "inapp" not in statuses
    assert statuses["email"]["status"] == "skipped"
    assert statuses["email"]["error_message"] == "email disabled by the user's preferences"
    assert statuses["sms"]["status"] == "skipped"
    assert statuses["sms"]["error_message"] == "user has no phone number"
    nid = notification_id(EVENT["event_id"], "user-42")
    assert statuses["sms"]["delivery_id"] == delivery_id(nid, "sms")


def test_nothing_delivered_means_no_notification_only_skipped_statuses() -> None:
    overrides = {"comment.created": {"enabled": False, "channels": None}}
    # A template that could not render does not matter: nothing is rendered.
    broken = event_type(templates={"inapp": {"title": "", "body": "{{ missing }}"}})
    routed = routing.route(recipient(), user(), prefs(event_overrides=overrides), broken, NOW)
    assert routed.notification is None and routed.deliveries == []
    assert {s["status"] for s in routed.statuses} == {"skipped"}
    assert len(routed.statuses) == 3


def test_channels_without_a_template_fall_back_to_inapp_then_to_generated_ones() -> None:
    only_inapp = event_type(templates={"inapp": {"title": "T {{ post_title }}", "body": "B"}})
    routed = routing.route(recipient(), user(), None, only_inapp, NOW)
    email = next(d for d in routed.deliveries if d["channel"] == "email")
    assert (email["subject"], email["body_text"], email["body_html"]) == (
        "T Kafka at scale",
        "B",
        None,
    )

    none = event_type(name="New comment", templates={})
    routed = routing.route(recipient(), user(), None, none, NOW)
    assert routed.notification is not None
    assert routed.notification["title"] == "New comment"
    assert "Excerpt: Nice post!" in routed.notification["message"]
    assert "Post title: Kafka at scale" in routed.notification["message"]
    email = next(d for d in routed.deliveries if d["channel"] == "email")
    assert email["body_html"] and "Nice post!" in email["body_html"]


def test_context_values_are_data_never_templates() -> None:
    attack = "{{ ''.__class__ }}<script>"
    routed = routing.route(recipient(excerpt=attack), user(), None, event_type(), NOW)
    assert routed.notification is not None
    assert routed.notification["message"] == attack
    email = next(d for d in routed.deliveries if d["channel"] == "email")
    assert email["body_text"] == f"Hi Ada, someone wrote: {attack}"
    # The HTML part is autoescaped.
    assert email["body_html"] == "<p>{{ &#39;&#39;.__class__ }}&lt;script&gt;</p>"


def test_a_template_cannot_reach_python_internals() -> None:
    hostile = event_type(templates={"inapp": {"title": "", "body": "{{ ''.__class__.__mro__ }}"}})
    with pytest.raises(PermanentError):
        routing.route(recipient(), user(), None, hostile, NOW)


def test_builtins_are_available_and_the_event_context_wins() -> None:
    body = "{{ display_name }}|{{ event_type_name }}|{{ event_type }}|{{ user_id }}|{{ actor_id }}"
    typ = event_type(templates={"inapp": {"title": "{{ occurred_at }}", "body": body}})
    routed = routing.route(recipient(), user(), None, typ, NOW)
    assert routed.notification is not None
    assert routed.notification["message"] == "Ada|New comment|comment.created|user-42|user-17"
    assert routed.notification["title"] == WHEN.isoformat()
    nameless = routing.route(recipient(), user(display_name=None), None, typ, NOW)
    assert nameless.notification is not None
    assert nameless.notification["message"].startswith("user-42|")
    overridden = routing.route(recipient(display_name="Boss"), user(), None, typ, NOW)
    assert overridden.notification is not None
    assert overridden.notification["message"].startswith("Boss|")


def test_a_missing_template_key_is_a_permanent_render_error() -> None:
    typ = event_type()
    event = recipient()
    del event["event"]["context"]["excerpt"]
    with pytest.raises(PermanentError) as caught:
        routing.route(event, user(), None, typ, NOW)
    assert caught.value.error_class == "template.missing_key"
    assert "excerpt" in caught.value.message


def test_route_refuses_an_inactive_type() -> None:
    with pytest.raises(PermanentError) as caught:
        routing.route(recipient(), user(), None, event_type(is_active=False), NOW)
    assert caught.value.error_class == "event_type.inactive"


def test_ids_are_deterministic() -> None:
    first = routing.route(recipient(), user(), None, event_type(), NOW)
    again = routing.route(recipient(), user(), None, event_type(), NOW)
    assert first == again
    other_user = routing.route(
        recipient("user-43"), user(user_id="user-43"), None, event_type(), NOW
    )
    assert first.notification is not None and other_user.notification is not None
    assert first.notification["notification_id"] != other_user.notification["notification_id"]
    assert first.notification["notification_id"] == notification_id(EVENT["event_id"], "user-42")
    ids = {d["delivery_id"] for d in first.deliveries}
    assert len(ids) == 3


def test_routed_outputs_name_the_catalogue_topics_and_keys() -> None:
    catalogue = CATALOGUE.with_prefix("t.")
    routed = routing.route(recipient(), user(phone=None), None, event_type(), NOW)
    out = routing.routed_outputs(routed, catalogue)
    nid = notification_id(EVENT["event_id"], "user-42")
    assert [(o.topic, o.key) for o in out] == [
        (catalogue.notifications.name, b"user-42"),
        (catalogue.deliveries_inapp.name, b"user-42"),
        (catalogue.deliveries_email.name, b"user-42"),
        (catalogue.delivery_status.name, nid),  # email pending (none for in-app)
        (catalogue.delivery_status.name, nid),  # sms skipped
    ]
    values = [decode(o.value or b"") for o in out]
    assert values[0] == routed.notification
    assert values[1:3] == routed.deliveries
    assert values[3:] == routed.statuses
    skipped = routing.routed_outputs(
        routing.route(
            recipient(),
            user(),
            prefs(event_overrides={"comment.created": {"enabled": False, "channels": None}}),
            event_type(),
            NOW,
        ),
        catalogue,
    )
    assert {o.topic for o in skipped} == {catalogue.delivery_status.name}


# --- lookup deadline ---------------------------------------------------------------------


def test_lookup_deadline_is_shared_by_a_burst_and_bounded() -> None:
    grace = 2.0
    # A fresh record waits until it is `grace` old.
    assert routing.lookup_deadline(100.0, 50.0, 100.5, grace) == 102.0
    # An old record read from a backlog does not wait...
    assert routing.lookup_deadline(10.0, 50.0, 100.0, grace) == 52.0
    # ...unless the worker has just (re)started: the tables get `grace` to catch up.
    assert routing.lookup_deadline(10.0, 99.0, 100.0, grace) == 101.0
    # A timestamp from the future never makes a record wait more than `grace`.
    assert routing.lookup_deadline(5000.0, 50.0, 100.0, grace) == 102.0
