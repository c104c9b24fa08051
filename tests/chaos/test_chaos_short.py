"""The short chaos run that ``make test`` (and so CI) includes: a few hundred events, one copy
of each service, every fault once (the 10,000-recipient event is left to ``make chaos``).

It runs on a private stack of its own (never the shared one, whose broker and database it
would otherwise kill), and asserts the verdict counted at the sinks: nothing lost, nothing
delivered twice (webhooks: received again only after a fault that left the send's outcome
unknown, as the design allows), SMS failed over to the second provider during the outage, no
poison record left off the DLQ, no consumer group lagging, no service exiting on its own.
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import Plan, run_plan

pytestmark = pytest.mark.integration


def test_short_chaos_run_loses_nothing_and_sends_nothing_twice() -> None:
    plan = Plan(
        label="short",
        events=600,
        rate=12.0,
        users=100,
        faults=("kills", "broker", "postgres", "sms-outage", "poison", "oversize"),
        kill_interval=8.0,
        outage_seconds=15.0,
        start_timeout=120.0,
        settle_timeout=150.0,
        quiet_seconds=20.0,
    )
    verdict = run_plan(plan)
    # Something was really checked: every channel (webhook too) expected deliveries, and the
    # SMS outage sent some through the failover provider.
    assert set(verdict.channels) == {"inapp", "email", "sms", "webhook"}
    assert all(count.expected > 0 for count in verdict.channels.values())
    assert verdict.sms_providers.get("sms-b", 0) > 0, verdict.render()
    assert verdict.passed, verdict.render()
