"""Every scenario of ``herald demo`` on the real pipeline (each test on its own topics and
schema), asserting the outcome in PostgreSQL, the SMTP sink and the SMS stand-in."""

from __future__ import annotations

import pytest

from herald import demo
from herald.demo import ScenarioResult
from tests.integration.pipeline import Pipeline, wait_for

pytestmark = pytest.mark.integration


def passed(result: ScenarioResult) -> ScenarioResult:
    """The result, after failing the test with the account if any check failed."""
    assert result.passed, result.render()
    return result


def test_registration_brings_a_welcome_in_app_and_by_email(pipeline: Pipeline) -> None:
    result = passed(demo.registration(pipeline))
    ada = result.data["user"]
    rows = pipeline.sql("select event_type, title from notification where user_id = %s", ada)
    assert rows == [("user.registered", "Welcome to Herald, Ada!")]
    prefs = pipeline.sql(
        "select inapp_enabled, email_enabled, sms_enabled from notification_preference"
        " where user_id = %s",
        ada,
    )
    assert prefs == [(True, True, True)]
    codes = {r[0] for r in pipeline.sql("select code from event_type")}
    assert {"user.registered", "user.login", "security.login_alert"} <= codes
    assert {"comment.created", "digest.weekly"} <= codes
    emails = pipeline.emails_to(pipeline.user_contact(ada)["email"])
    assert [m["subject"] for m in emails] == ["Welcome to Herald, Ada!"]


def test_a_login_from_an_unknown_device_raises_an_alert_and_a_known_one_none(
    pipeline: Pipeline,
) -> None:
    result = passed(demo.login(pipeline))
    lee = result.data["user"]
    rows = pipeline.sql(
        "select event_type, count(*) from notification where user_id = %s group by event_type",
        lee,
    )
    assert rows == [("security.login_alert", 2)]
    emails = pipeline.emails_to(pipeline.user_contact(lee)["email"])
    assert sorted(m["subject"] for m in emails) == ["New sign-in to your account"] * 2


def test_an_event_type_created_at_run_time_is_delivered(pipeline: Pipeline) -> None:
    result = passed(demo.dynamic_event_type(pipeline))
    dee = result.data["user"]
    rows = pipeline.sql("select event_type, title from notification where user_id = %s", dee)
    assert rows == [(result.data["code"], "Invoice paid")]
    emails = pipeline.emails_to(pipeline.user_contact(dee)["email"])
    assert len(emails) == 1 and "INV-7" in emails[0]["raw"]


def test_a_comment_notifies_every_participant_but_the_author(pipeline: Pipeline) -> None:
    result = passed(demo.comment(pipeline, participants=20))
    readers, author = result.data["readers"], result.data["author"]
    rows = pipeline.sql(
        "select user_id from notification where event_id = %s::uuid", result.data["event_id"]
    )
    assert sorted(r[0] for r in rows) == sorted(readers)
    assert pipeline.emails_to(pipeline.user_contact(author)["email"]) == []
    for reader in readers[:5]:
        contact = pipeline.user_contact(reader)
        assert len(pipeline.emails_to(contact["email"])) == 1
        assert len(pipeline.sms_to(contact["phone"])) == (0 if reader == readers[0] else 1)
    skipped = pipeline.sql(
        "select status, error_message from notification_delivery where user_id = %s"
        " and channel = 'sms'",
        readers[0],
    )
    assert skipped == [("skipped", "SMS disabled by the user's preferences")]


def test_turning_email_off_for_comments_and_back_on(pipeline: Pipeline) -> None:
    result = passed(demo.preferences(pipeline))
    pat = result.data["user"]
    no_endpoints = {(pat, "webhook"): "skipped", (pat, "slack"): "skipped"}
    assert result.data["off"] == {
        (pat, "inapp"): "delivered",
        (pat, "email"): "skipped",
        (pat, "sms"): "sent",
        **no_endpoints,
    }
    assert result.data["on"] == {
        (pat, "inapp"): "delivered",
        (pat, "email"): "sent",
        (pat, "sms"): "sent",
        **no_endpoints,
    }
    contact = pipeline.user_contact(pat)
    emails = pipeline.emails_to(contact["email"])
    assert len(emails) == 1 and "two" in emails[0]["raw"]
    assert len(pipeline.sms_to(contact["phone"])) == 2


def test_the_weekly_digest_lists_unread_notifications_once_a_week(pipeline: Pipeline) -> None:
    result = passed(demo.weekly_digest(pipeline))
    max_ = result.data["user"]
    assert result.data["unread"] == 2  # three comments, one marked read through the read API
    digests = [
        m
        for m in pipeline.emails_to(pipeline.user_contact(max_)["email"])
        if m["subject"].startswith("Your week")
    ]
    assert len(digests) == 1
    assert digests[0]["subject"] == "Your week: 2 unread notifications"
    rows = pipeline.sql(
        "select count(*) from notification_delivery where user_id = %s and channel = 'email'"
        " and status = 'sent'",
        max_,
    )
    assert rows == [(5,)]  # three comments, the digest, the marker comment


class TestTheRouterSchedulesTheDigest:
    """The router's crontab (here every minute) runs the digest job by itself."""

    @pytest.fixture
    def pipeline_env(self) -> dict[str, str]:
        return {"ROUTER_DIGEST_CRON": "* * * * *"}

    def test_a_digest_arrives_without_anyone_asking(self, pipeline: Pipeline) -> None:
        pipeline.seed()
        zoe, sam = pipeline.user("zoe"), pipeline.user("sam")
        event_id = pipeline.publish(
            "comment.created",
            [zoe],
            actor_id=sam,
            post_title="Cron",
            author_name="Sam",
            excerpt="tick",
        )
        wait_for(lambda: pipeline.inbox(event_id), 60, "zoe's comment in the inbox")
        address = pipeline.user_contact(zoe)["email"]

        def digest_email() -> list[dict[str, object]]:
            return [m for m in pipeline.emails_to(address) if "unread" in m["subject"]]

        # The crontab fires at the start of every minute: at most ~60 s plus the pipeline.
        mails = wait_for(digest_email, 100, "the scheduled digest email")
        assert mails[0]["subject"] == "Your week: 1 unread notification"
