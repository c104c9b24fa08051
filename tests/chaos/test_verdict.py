"""The chaos verdict's counting rules on made-up sink contents (no stack): webhooks at least
once, a repeat allowed only around a fault that left a send's outcome unknown; SMS exactly once
over both providers together; the SMS outage must have used the failover provider."""

from __future__ import annotations

from collections import Counter

from tests.chaos.verdict import Sinks, judge
from tests.chaos.workload import Workload

LAGS = {"herald-router": 0}


def workload_with_one_event() -> tuple[Workload, dict[str, str]]:
    """One chaos.all event to a webhook user; its sink ids by channel."""
    workload = Workload(users=3, webhook_sink="http://127.0.0.1:1")
    user = workload.people[0]
    assert user.webhook
    workload.acknowledged(workload.event("chaos.all", [user.user_id], 1), "event")
    ids = {channel: sink_id for (_, _, channel), sink_id in workload.expected.items()}
    assert set(ids) == {"inapp", "email", "sms", "webhook"}
    return workload, ids


def sinks(ids: dict[str, str], hook_times: list[float], sms_a: int = 1, sms_b: int = 0) -> Sinks:
    return Sinks(
        emails=Counter([ids["email"]]),
        sms=Counter({ids["sms"]: sms_a + sms_b}),
        sms_dedup_hits=0,
        inapp=Counter([ids["inapp"]]),
        letters=[],
        webhooks={ids["webhook"]: hook_times} if hook_times else {},
        sms_providers={"sms-a": sms_a, "sms-b": sms_b},
    )


def test_a_user_without_endpoint_expects_no_webhook() -> None:
    workload = Workload(users=3, webhook_sink="http://127.0.0.1:1")
    assert workload.people[1].webhook is None
    workload.acknowledged(workload.event("chaos.all", [workload.people[1].user_id], 1), "event")
    assert {channel for (_, _, channel) in workload.expected} == {"inapp", "email", "sms"}


def test_webhook_once_passes_and_missing_is_lost() -> None:
    workload, ids = workload_with_one_event()
    assert judge(workload, sinks(ids, [10.0]), LAGS).passed
    verdict = judge(workload, sinks(ids, []), LAGS)
    assert verdict.channels["webhook"].lost == 1
    assert not verdict.passed


def test_webhook_repeat_is_allowed_only_around_a_sender_kill_or_database_crash() -> None:
    workload, ids = workload_with_one_event()
    twice = sinks(ids, [10.0, 20.0])
    for fault in ("webhook_sender", "webhook_sender-2", "postgres"):
        verdict = judge(workload, twice, LAGS, [(fault, 15.0)])
        assert verdict.passed, verdict.render()
        webhook = verdict.channels["webhook"]
        assert (webhook.resent, webhook.duplicated) == (1, 0)
    # No fault, a fault of another kind, or one outside the two receipts: a duplicate.
    for faults in ([], [("sms_sender", 15.0)], [("broker", 15.0)], [("webhook_sender", 25.0)]):
        verdict = judge(workload, twice, LAGS, faults)
        assert verdict.channels["webhook"].duplicated == 1, faults
        assert not verdict.passed


def test_sms_counts_over_both_providers_and_failover_must_be_used() -> None:
    workload, ids = workload_with_one_event()
    assert judge(workload, sinks(ids, [1.0], sms_a=0, sms_b=1), LAGS, [], True).passed
    on_both = judge(workload, sinks(ids, [1.0], sms_a=1, sms_b=1), LAGS)
    assert on_both.channels["sms"].duplicated == 1
    assert not on_both.passed
    no_failover = judge(workload, sinks(ids, [1.0], sms_a=1, sms_b=0), LAGS, [], True)
    assert no_failover.failover_missing
    assert not no_failover.passed
