"""``herald status`` on the real stack: a healthy SMS path reads as all well (exit 0); once the
SMS sender is stopped with requests waiting and a dead letter is parked, its consumer group
reads as stuck with the right lag, the DLQ with its depth, and the command exits 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer

from herald.settings import DatabaseSettings, KafkaSettings
from herald.streaming import producer_config
from schemas import Catalogue
from tests.integration.delivery_util import publish, wait_for
from tests.integration.kafka_util import committed_to_end
from tests.integration.pipeline import free_port
from tests.integration.services import ServiceProcess, service_env
from tests.integration.test_sms_sender import phone, sms_request

pytestmark = pytest.mark.integration


def herald_status(env: dict[str, str], *args: str) -> tuple[int, str]:
    """``herald status`` as an operator runs it (the virtualenv's ``herald`` script)."""
    script = Path(sys.executable).with_name("herald")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "herald.cli.main"]
    done = subprocess.run(
        [*command, "status", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, done.stdout


def consumed(kafka: KafkaSettings, group: str, topics: list[str]) -> bool:
    """Whether ``group`` committed everything on ``topics`` (False while fresh topics'
    leadership settles on the shared broker)."""
    try:
        return committed_to_end(kafka, group, topics)
    except KafkaException:
        return False


def by(rows: list[dict[str, Any]], key: str, value: str) -> dict[str, Any]:
    (row,) = [r for r in rows if r[key] == value]
    return row


def test_a_stopped_sender_with_waiting_records_is_stuck_and_the_dlq_shows_its_depth(
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> None:
    sms_port, store_port = free_port(), free_port()
    env = service_env(
        kafka_settings,
        db_settings,
        SMS_SENDER_METRICS_PORT=str(sms_port),
        INAPP_STORE_METRICS_PORT=str(store_port),
        ROUTER_METRICS_PORT="0",
        EMAIL_SENDER_METRICS_PORT="0",
        WEBHOOK_SENDER_METRICS_PORT="0",
        SLACK_SENDER_METRICS_PORT="0",
    )
    # Neither API nor the router runs here: leave them out of the report.
    only_running = ["--endpoint", "ingest=off", "--endpoint", "read_api=off"]
    sms = topics.deliveries_sms
    sms_topics = [sms.name, *sms.retry_topic_names]
    group = kafka_settings.topic_prefix + "sms_sender"

    publish(kafka_settings, sms.name, [sms_request(phone()) for _ in range(3)])
    sender = run_service("services.sms_sender", env)
    run_service("services.inapp_store", env)
    wait_for(lambda: consumed(kafka_settings, group, sms_topics), 45, "3 SMS consumed")
    store = kafka_settings.topic_prefix + "inapp_store"
    statuses = [topics.delivery_status.name]
    wait_for(lambda: consumed(kafka_settings, store, statuses), 30, "the statuses stored")

    code, out = herald_status(env, "--json", *only_running)
    report = json.loads(out)
    assert (code, report["ok"], report["problems"]) == (0, True, []), out
    sms_group = by(report["consumer_groups"], "group", group)
    assert (sms_group["verdict"], sms_group["lag"], sms_group["members"]) == ("ok", 0, 1)
    assert by(report["services"], "name", "sms_sender")["ready"] is True
    assert by(report["breakers"], "channel", "sms")["state"] == "closed"
    per_minute = by(report["deliveries_per_minute"]["channels"], "channel", "sms")
    assert per_minute["sent"] == 3, report["deliveries_per_minute"]
    assert all(row["depth"] == 0 for row in report["dlq"])

    # The sender stops (leaves its group); requests keep coming; one letter is parked.
    assert sender.stop() == 0
    publish(kafka_settings, sms.name, [sms_request(phone()) for _ in range(4)])
    producer = Producer(producer_config(kafka_settings))
    producer.produce(sms.dlq_name, key=b"u-1", value=b"not a delivery request")
    assert producer.flush(30) == 0

    code, out = herald_status(env, "--json", *only_running)
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    sms_group = by(report["consumer_groups"], "group", group)
    assert sms_group["verdict"] == "stuck", sms_group
    assert (sms_group["lag"], sms_group["members"], sms_group["state"]) == (4, 0, "empty")
    assert sms_group["topics"][sms.name] == 4
    assert sum(p["lag"] for p in sms_group["partitions"]) == 4
    assert sum(p["end"] for p in sms_group["partitions"] if p["topic"] == sms.name) == 7
    dlq = by(report["dlq"], "topic", sms.dlq_name)
    assert dlq["depth"] == 1 and sum(dlq["partitions"].values()) == 1
    assert by(report["services"], "name", "sms_sender")["up"] is False
    assert by(report["services"], "name", "inapp_store")["ready"] is True
    assert by(report["breakers"], "channel", "sms")["state"] == "unknown"
    assert by(report["consumer_groups"], "service", "inapp_store")["verdict"] == "ok"
    problems = report["problems"]
    assert f"consumer group {group} is stuck: 4 records waiting" in " ".join(problems)
    assert f"{sms.dlq_name} holds 1 dead letters (herald dlq list)" in problems
    assert len(problems) == 3, problems  # stuck, DLQ, sender down

    code, table = herald_status(env, *only_running)
    assert code == 1
    assert "stuck" in table and "3 problem(s)" in table
