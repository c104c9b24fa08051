"""``herald status``: the verdicts (stuck, lagging, DLQ, down, breakers) and the report's JSON
shape on fixed readings, without Kafka, PostgreSQL or services."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from herald.channels import CHANNELS
from herald.cli import status as st
from herald.cli.main import app
from schemas import CATALOGUE

PREFIX = "p."
CAT = CATALOGUE.with_prefix(PREFIX)
GROUPS = st.consumer_groups(CAT, PREFIX)
DLQS = st.dlq_topics(CAT)
SMS = CAT.for_channel("sms")

BREAKER_TEXT = """\
# HELP herald_sender_circuit_open 1 while the sender backs off
# TYPE herald_sender_circuit_open gauge
herald_sender_circuit_open{channel="sms"} %s
# HELP herald_dlq_guard_tripped 1 while the service holds its dead letters
# TYPE herald_dlq_guard_tripped gauge
herald_dlq_guard_tripped{service="sms_sender"} %s
"""


def healthy_probes(**changes: st.Probe) -> list[st.Probe]:
    probes = {
        name: st.Probe(name, f"http://127.0.0.1:{9000 + i}", 200, 200, "", "")
        for i, name in enumerate(st.SERVICES)
    }
    probes["sms_sender"] = st.Probe(
        "sms_sender", "http://127.0.0.1:9103", 200, 200, "", BREAKER_TEXT % (0, 0)
    )
    probes.update(changes)
    return [probes[name] for name in st.SERVICES]


def kafka_reading(
    sms_committed: dict[tuple[str, int], int] | None = None,
    sms_state: tuple[str, int] = ("stable", 1),
    sms_ends: dict[int, int] | None = None,
    dlq_depth: int = 0,
) -> st.KafkaReading:
    """Every catalogue topic with 2 partitions, all empty except what is asked for."""
    reading = st.KafkaReading()
    for topic in {t for g in GROUPS for t in g.topics} | set(DLQS):
        reading.partitions[topic] = [0, 1]
        for p in (0, 1):
            reading.watermarks[(topic, p)] = (0, 0)
    for p, end in (sms_ends or {}).items():
        reading.watermarks[(SMS.name, p)] = (0, end)
    reading.watermarks[(SMS.dlq_name, 1)] = (5, 5 + dlq_depth)
    for spec in GROUPS:
        reading.groups[spec.group_id] = ("stable", 1)
        reading.committed[spec.group_id] = {}
    reading.groups[PREFIX + "sms_sender"] = sms_state
    reading.committed[PREFIX + "sms_sender"] = sms_committed or {}
    return reading


def report(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "probes": healthy_probes(),
        "kafka": kafka_reading(),
        "bootstrap_servers": "127.0.0.1:19092",
        "prefix": PREFIX,
        "groups": GROUPS,
        "dlqs": DLQS,
        "delivery_counts": {("sms", "sent"): 30, ("email", "dead"): 2, ("sms", "retrying"): 9},
        "channels": CAT.channels,
    }
    args.update(kwargs)
    return st.build_report(**args)


def group(rep: dict[str, Any], service: str) -> dict[str, Any]:
    (found,) = [g for g in rep["consumer_groups"] if g["service"] == service]
    return found


# --- lag and verdicts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("committed", "low", "high", "lag"),
    [
        (None, 0, 7, 7),  # never committed: reads from the earliest record
        (None, 4, 7, 3),  # ... which retention may have moved
        (5, 0, 7, 2),
        (7, 0, 7, 0),
        (2, 4, 7, 3),  # committed below the log start: resets to the earliest
        (9, 0, 7, 0),  # never negative
    ],
)
def test_partition_lag(committed: int | None, low: int, high: int, lag: int) -> None:
    assert st.partition_lag(committed, low, high) == lag


@pytest.mark.parametrize(
    ("state", "members", "lag", "verdict"),
    [
        ("stable", 2, 0, "ok"),
        ("stable", 1, 10, "lagging"),
        ("preparing_rebalancing", 1, 10, "rebalancing"),
        ("empty", 0, 10, "stuck"),  # a stopped consumer with records waiting
        ("dead", 0, 3, "stuck"),  # a group that never existed, records waiting
        ("unknown", 0, 3, "stuck"),
        ("empty", 0, 0, "idle"),
        ("dead", 0, 0, "idle"),
    ],
)
def test_group_verdict(state: str, members: int, lag: int, verdict: str) -> None:
    assert st.group_verdict(state, members, lag) == verdict


def test_a_stopped_sender_with_waiting_records_is_stuck_with_its_lag_per_partition() -> None:
    rep = report(
        kafka=kafka_reading(
            sms_committed={(SMS.name, 0): 3, (SMS.name, 1): 1},
            sms_state=("empty", 0),
            sms_ends={0: 5, 1: 4},
        )
    )
    sms = group(rep, "sms_sender")
    assert (sms["verdict"], sms["lag"], sms["members"], sms["state"]) == ("stuck", 5, 0, "empty")
    assert sms["topics"][SMS.name] == 5
    assert all(sms["topics"][t] == 0 for t in SMS.retry_topic_names)
    rows = {(r["topic"], r["partition"]): r for r in sms["partitions"]}
    assert rows[(SMS.name, 0)] == {
        "topic": SMS.name,
        "partition": 0,
        "committed": 3,
        "low": 0,
        "end": 5,
        "lag": 2,
    }
    assert rows[(SMS.name, 1)]["lag"] == 3
    assert rows[(SMS.retry_topic_names[0], 0)]["committed"] is None
    assert not rep["ok"]
    assert any("sms_sender is stuck: 5 records waiting" in p for p in rep["problems"])


def test_a_lagging_group_with_members_is_not_a_problem() -> None:
    rep = report(kafka=kafka_reading(sms_ends={0: 100}))
    assert group(rep, "sms_sender")["verdict"] == "lagging"
    assert group(rep, "sms_sender")["lag"] == 100
    assert rep["ok"], rep["problems"]


def test_committed_topics_outside_the_catalogue_count_too() -> None:
    reading = kafka_reading()
    reading.partitions["p.extra"] = [0]
    reading.watermarks[("p.extra", 0)] = (0, 10)
    reading.committed[PREFIX + "sms_sender"] = {("p.extra", 0): 4}
    sms = group(report(kafka=reading), "sms_sender")
    assert sms["topics"]["p.extra"] == 6 and sms["lag"] == 6


def test_missing_topics_are_one_problem() -> None:
    reading = kafka_reading()
    del reading.partitions[SMS.name]
    del reading.partitions[SMS.dlq_name]
    rep = report(kafka=reading)
    assert group(rep, "sms_sender")["missing_topics"] == [SMS.name]
    assert {"topic": SMS.dlq_name, "depth": None, "partitions": {}} in rep["dlq"]
    (problem,) = rep["problems"]
    assert problem.startswith("2 topics of the catalogue missing")


# --- DLQ, services, breakers, deliveries ------------------------------------------------------


def test_dlq_depth_is_high_minus_low_over_partitions_and_non_empty_is_a_problem() -> None:
    rep = report(kafka=kafka_reading(dlq_depth=3))
    (row,) = [r for r in rep["dlq"] if r["topic"] == SMS.dlq_name]
    assert row == {"topic": SMS.dlq_name, "depth": 3, "partitions": {"0": 0, "1": 3}}
    assert rep["problems"] == [f"{SMS.dlq_name} holds 3 dead letters (herald dlq list)"]
    assert [r["depth"] for r in rep["dlq"] if r["topic"] != SMS.dlq_name] == [0] * (len(DLQS) - 1)


def test_services_down_not_ready_and_without_endpoint() -> None:
    probes = healthy_probes(
        router=st.Probe("router", "http://127.0.0.1:9402", error="ConnectError: refused"),
        inapp_store=st.Probe("inapp_store", "http://127.0.0.1:9104", 200, 503, '{"x": 1}', ""),
        email_sender=st.Probe("email_sender", None),
    )
    rep = report(probes=probes)
    rows = {r["name"]: r for r in rep["services"]}
    assert (rows["router"]["up"], rows["router"]["ready"]) == (False, False)
    assert (rows["inapp_store"]["up"], rows["inapp_store"]["ready"]) == (True, False)
    assert rows["inapp_store"]["detail"] == '{"x": 1}'
    assert (rows["email_sender"]["up"], rows["email_sender"]["ready"]) == (None, None)
    assert (rows["ingest"]["up"], rows["ingest"]["ready"]) == (True, True)
    assert rep["problems"] == [
        "router is down (http://127.0.0.1:9402: ConnectError: refused)",
        'inapp_store is not ready ({"x": 1})',
    ]
    breakers = {r["channel"]: r for r in rep["breakers"]}
    assert breakers["email"]["state"] == "unknown"


def test_breaker_and_guard_states_come_from_the_senders_metrics() -> None:
    sms = st.Probe("sms_sender", "http://127.0.0.1:9103", 200, 200, "", BREAKER_TEXT % (1, 1))
    rep = report(probes=healthy_probes(sms_sender=sms))
    breakers = {r["channel"]: r for r in rep["breakers"]}
    assert breakers["sms"]["state"] == "open"
    # The email sender answers but exports no breaker gauge: unknown, not a problem.
    assert breakers["email"]["state"] == "unknown"
    assert "not exported" in breakers["email"]["detail"]
    assert rep["dlq_guards"] == [{"service": "sms_sender", "state": "tripped"}]
    assert rep["problems"] == [
        "sms circuit breaker of sms_sender is open",
        "DLQ-flood guard of sms_sender tripped (see its log)",
    ]
    closed = report()
    assert {r["channel"]: r["state"] for r in closed["breakers"]}["sms"] == "closed"
    assert closed["dlq_guards"] == [{"service": "sms_sender", "state": "ok"}]
    down = report(probes=healthy_probes(sms_sender=st.Probe("sms_sender", "http://x", error="e")))
    assert {r["channel"]: r["state"] for r in down["breakers"]}["sms"] == "unknown"


def test_deliveries_per_minute_count_final_statuses_per_channel() -> None:
    rows = st.delivery_rows(
        {
            ("sms", "sent"): 30,
            ("sms", "failed"): 1,
            ("sms", "dead"): 2,
            ("inapp", "delivered"): 7,
            ("email", "skipped"): 4,
            ("email", "retrying"): 50,  # not final
        },
        ("inapp", "email", "sms"),
    )
    assert rows == [
        {"channel": "inapp", "sent": 7, "failed": 0, "skipped": 0, "total": 7},
        {"channel": "email", "sent": 0, "failed": 0, "skipped": 4, "total": 4},
        {"channel": "sms", "sent": 30, "failed": 3, "skipped": 0, "total": 33},
    ]
    assert st.delivery_rows({("sms", "sent"): 3}, ("sms",), window_s=120)[0]["sent"] == 1.5


def test_kafka_and_postgres_unreachable_are_problems() -> None:
    rep = report(
        kafka=st.KafkaReading(error="Local: Broker transport failure"),
        delivery_counts=None,
        delivery_error="OperationalError: connection refused",
    )
    assert rep["consumer_groups"] == [] and rep["dlq"] == []
    assert rep["deliveries_per_minute"] == {
        "window_seconds": 60,
        "error": "OperationalError: connection refused",
        "channels": [],
    }
    assert rep["problems"] == [
        "Kafka at 127.0.0.1:19092 did not answer: Local: Broker transport failure",
        "deliveries not read from PostgreSQL: OperationalError: connection refused",
    ]


def test_the_json_shape() -> None:
    rep = report(kafka=kafka_reading(sms_state=("empty", 0), sms_ends={0: 2}))
    decoded = json.loads(json.dumps(rep))
    assert set(decoded) == {
        "ok",
        "problems",
        "services",
        "kafka",
        "consumer_groups",
        "dlq",
        "deliveries_per_minute",
        "breakers",
        "dlq_guards",
    }
    assert decoded["ok"] is False
    assert decoded["kafka"] == {
        "bootstrap_servers": "127.0.0.1:19092",
        "topic_prefix": PREFIX,
        "error": None,
    }
    assert set(decoded["services"][0]) == {"name", "url", "up", "ready", "detail"}
    assert [s["name"] for s in decoded["services"]] == list(st.SERVICES)
    assert set(decoded["consumer_groups"][0]) == {
        "group",
        "service",
        "state",
        "members",
        "lag",
        "verdict",
        "topics",
        "missing_topics",
        "partitions",
    }
    assert [g["group"] for g in decoded["consumer_groups"]] == [
        "p.herald-router",
        "p.email_sender",
        "p.sms_sender",
        "p.webhook_sender",
        "p.slack_sender",
        "p.inapp_store",
    ]
    assert set(decoded["consumer_groups"][0]["partitions"][0]) == {
        "topic",
        "partition",
        "committed",
        "low",
        "end",
        "lag",
    }
    assert set(decoded["dlq"][0]) == {"topic", "depth", "partitions"}
    channels = decoded["deliveries_per_minute"]["channels"]
    assert sorted(c["channel"] for c in channels) == sorted(CHANNELS)
    assert set(channels[0]) == {"channel", "sent", "failed", "skipped", "total"}
    assert set(decoded["breakers"][0]) == {"service", "channel", "state", "detail"}


# --- the catalogue of groups, endpoints, the command ------------------------------------------


def test_group_ids_and_topics_are_the_services_own() -> None:
    from services.email_sender.service import SERVICE as EMAIL
    from services.inapp_store.settings import SERVICE as INAPP
    from services.sms_sender.service import SERVICE as SMS_SERVICE
    from services.webhook_sender.service import SERVICES as ENDPOINT_SERVICES

    ids = {g.service: g.group_id for g in GROUPS}
    assert ids == {
        "router": "p.herald-router",
        "email_sender": f"p.{EMAIL}",
        "sms_sender": f"p.{SMS_SERVICE}",
        "webhook_sender": f"p.{ENDPOINT_SERVICES['webhook']}",
        "slack_sender": f"p.{ENDPOINT_SERVICES['slack']}",
        "inapp_store": f"p.{INAPP}",
    }
    topics = {g.service: g.topics for g in GROUPS}
    assert topics["sms_sender"] == (SMS.name, *SMS.retry_topic_names)
    assert CAT.events.name in topics["router"]
    assert CAT.delivery_status.name in topics["inapp_store"]
    webhook = CAT.for_channel("webhook")
    assert topics["webhook_sender"] == (webhook.name, *webhook.retry_topic_names)
    assert len(DLQS) == 8 and all(t.startswith(PREFIX) and t.endswith(".dlq") for t in DLQS)


def test_endpoints_come_from_the_services_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from herald.settings import Settings

    monkeypatch.setenv("ROUTER_METRICS_PORT", "9999")
    monkeypatch.setenv("EMAIL_SENDER_METRICS_PORT", "0")
    monkeypatch.setenv("HERALD_INGEST_PORT", "18100")
    endpoints = st.endpoints_from_environment(Settings())
    assert endpoints["router"] == "http://127.0.0.1:9999"
    assert endpoints["email_sender"] is None
    assert endpoints["ingest"] == "http://127.0.0.1:18100"
    assert endpoints["sms_sender"] == "http://127.0.0.1:9103"
    assert endpoints["inapp_store"] == "http://127.0.0.1:9104"


def test_parse_endpoints() -> None:
    assert st.parse_endpoints(["router=http://10.0.0.5:9402/", "ingest=off", "sms_sender="]) == {
        "router": "http://10.0.0.5:9402",
        "ingest": None,
        "sms_sender": None,
    }
    with pytest.raises(ValueError, match="NAME one of"):
        st.parse_endpoints(["postgres=http://x"])
    with pytest.raises(ValueError):
        st.parse_endpoints(["router"])


@pytest.mark.parametrize(("dlq_depth", "code"), [(0, 0), (2, 1)])
def test_the_command_exits_1_on_a_problem_and_prints_json(
    monkeypatch: pytest.MonkeyPatch, dlq_depth: int, code: int
) -> None:
    fixed = report(kafka=kafka_reading(dlq_depth=dlq_depth))
    monkeypatch.setattr(st, "endpoints_from_environment", lambda settings: {})
    monkeypatch.setattr(st, "collect", lambda settings, endpoints, timeout: fixed)
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--json"])
    assert result.exit_code == code, result.output
    assert json.loads(result.output) == json.loads(json.dumps(fixed))
    table = runner.invoke(app, ["status"])
    assert table.exit_code == code
    assert "Consumer groups" in table.output and "Dead-letter topics" in table.output
    assert ("All well." in table.output) == (code == 0)
    bad = runner.invoke(app, ["status", "--endpoint", "nope=http://x"])
    assert bad.exit_code == 2
