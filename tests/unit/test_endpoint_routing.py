"""Webhook and Slack in the router's pure decisions (services/router/routing.py) and the
endpoint secrets of the admin API (services/ingest/endpoints.py)."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from herald.errors import PermanentError
from herald.templates import generate_templates
from herald.webhooks import new_secret
from services.ingest.endpoints import check_secret
from services.ingest.event_types import EventTypeUpdate, resolve_templates
from services.router import routing
from tests.samples import EVENT, SAMPLES

#: 23:00 in London (BST, UTC+1): inside quiet hours 22:00-07:30.
NIGHT = datetime(2024, 5, 1, 22, 0, tzinfo=UTC)
HOOK = "https://hooks.example.com/herald"
SLACK = "https://hooks.slack.com/services/T0/B0/x"


def event_type(**fields: Any) -> dict[str, Any]:
    base = copy.deepcopy(SAMPLES["herald.EventType"])
    base.update({"channels": ["inapp", "email", "webhook", "slack"], **fields})
    return base


def user(**fields: Any) -> dict[str, Any]:
    return {**SAMPLES["herald.User"], "endpoints": {"webhook": HOOK, "slack": SLACK}, **fields}


def prefs(**fields: Any) -> dict[str, Any]:
    return {**routing.default_preferences("user-42"), **fields}


def recipient() -> dict[str, Any]:
    return {
        "user_id": "user-42",
        "event": {
            **copy.deepcopy(EVENT),
            "context": {"actor": "Bo", "post_title": "Hi", "comment_url": "u"},
        },
    }


def test_a_user_with_both_endpoints_gets_both_channels() -> None:
    choices = routing.choose_channels(event_type(), prefs(), user())
    assert choices == {"inapp": None, "email": None, "webhook": None, "slack": None}


def test_a_channel_without_an_endpoint_is_skipped_with_the_reason() -> None:
    choices = routing.choose_channels(event_type(), prefs(), user(endpoints={}))
    assert choices["webhook"] == "user has no webhook endpoint"
    assert choices["slack"] == "user has no Slack endpoint"
    only_hook = routing.choose_channels(event_type(), prefs(), user(endpoints={"webhook": HOOK}))
    assert only_hook["webhook"] is None
    assert only_hook["slack"] == "user has no Slack endpoint"


def test_a_user_record_of_the_old_schema_has_no_endpoints() -> None:
    old = {k: v for k, v in user().items() if k != "endpoints"}
    assert routing.choose_channels(event_type(), prefs(), old)["webhook"] is not None


def test_the_switches_turn_webhook_and_slack_off() -> None:
    choices = routing.choose_channels(
        event_type(), prefs(webhook_enabled=False, slack_enabled=False), user()
    )
    assert choices["webhook"] == "webhook disabled by the user's preferences"
    assert choices["slack"] == "Slack disabled by the user's preferences"
    assert choices["inapp"] is None and choices["email"] is None


def test_a_mandatory_type_ignores_the_switches_but_still_needs_an_endpoint() -> None:
    mandatory = event_type(mandatory=True)
    off = prefs(webhook_enabled=False, slack_enabled=False)
    assert routing.choose_channels(mandatory, off, user())["webhook"] is None
    assert routing.choose_channels(mandatory, off, user(endpoints={}))["webhook"] is not None


def test_deliveries_go_to_the_endpoint_url_and_are_not_held_in_quiet_hours() -> None:
    night = prefs(quiet_hours_start="22:00", quiet_hours_end="07:30")
    routed = routing.route(recipient(), user(), night, event_type(), NIGHT)
    sent = {d["channel"]: d for d in routed.deliveries}
    assert set(sent) == {"inapp", "webhook", "slack"}
    assert sent["webhook"]["destination"] == HOOK
    assert sent["slack"]["destination"] == SLACK
    assert [h.delivery["channel"] for h in routed.held] == ["email"]


def test_webhook_and_slack_fall_back_to_the_in_app_template_or_use_their_own() -> None:
    templates = {
        "inapp": {"title": "New comment", "body": "{{ actor }} commented", "html": None},
        "slack": {"title": "*Comment*", "body": "_{{ actor }}_ wrote", "html": None},
    }
    both = event_type(channels=["webhook", "slack"], templates=templates)
    routed = routing.route(recipient(), user(), prefs(), both, NIGHT)
    sent = {d["channel"]: d for d in routed.deliveries}
    assert (sent["webhook"]["subject"], sent["webhook"]["body_text"]) == (
        "New comment",
        "Bo commented",
    )
    assert (sent["slack"]["subject"], sent["slack"]["body_text"]) == ("*Comment*", "_Bo_ wrote")
    assert sent["webhook"]["body_html"] is None


def test_generated_templates_cover_webhook_and_slack() -> None:
    bare = event_type(channels=["webhook", "slack"], templates={}, name="Invoice paid")
    routed = routing.route(recipient(), user(), prefs(), bare, NIGHT)
    assert len(routed.deliveries) == 2
    for delivery in routed.deliveries:
        assert delivery["subject"] == "Invoice paid"
        assert "Actor: Bo" in delivery["body_text"]


def test_an_over_long_endpoint_url_in_a_user_record_is_refused() -> None:
    routing.check_bounds(user(), routing.USER)
    with pytest.raises(PermanentError) as caught:
        routing.check_bounds(user(endpoints={"webhook": "https://x/" + "a" * 2048}), routing.USER)
    assert caught.value.error_class == "record.too_long"


def test_a_generated_secret_is_a_standard_webhooks_secret() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert check_secret(secret) == secret
    assert new_secret() != secret


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("abc", "must start with 'whsec_'"),
        ("whsec_not base64!", "followed by base64"),
        ("whsec_", "empty"),
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), "24 to 64 bytes, not 16"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64 bytes, not 65"),
    ],
)
def test_a_malformed_secret_is_refused_with_what_is_wrong(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_secret(secret)


def test_webhook_and_slack_without_a_template_follow_the_in_app_one() -> None:
    fields = EventTypeUpdate.model_validate(
        {
            "name": "N",
            "channels": ["inapp", "webhook", "slack"],
            "templates": {"slack": {"title": "*T*", "body": "slack"}},
        }
    )
    resolved = resolve_templates(fields, None)
    assert resolved.keys() == {"inapp", "slack"}  # webhook: rendered from the in-app one
    assert resolved["slack"]["body"] == "slack"
    without_inapp = fields.model_copy(update={"channels": ["webhook", "slack"], "templates": {}})
    generated = resolve_templates(without_inapp, None)
    assert generated == generate_templates("N", [], ["webhook", "slack"])
