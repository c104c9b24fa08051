"""Create the catalogue's topics on a Kafka cluster (idempotent)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from herald.settings import KafkaSettings
from schemas import CATALOGUE, Catalogue, TopicDeclaration


@dataclass(frozen=True)
class TopicResult:
    name: str
    outcome: str  # "created", "exists", "would create"


def admin_client(kafka: KafkaSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap_servers})


def create_topics(
    kafka: KafkaSettings,
    catalogue: Catalogue = CATALOGUE,
    *,
    prefix: str | None = None,
    dry_run: bool = False,
    timeout: float = 30.0,
) -> list[TopicResult]:
    """Create every topic of the catalogue (with retry tiers and DLQs) that does not exist.

    ``prefix`` defaults to ``KAFKA_TOPIC_PREFIX``; existing topics are left as they are.
    """
    wanted = catalogue.all_topics(kafka.topic_prefix if prefix is None else prefix)
    return create_declared_topics(kafka, wanted, dry_run=dry_run, timeout=timeout)


def create_declared_topics(
    kafka: KafkaSettings,
    wanted: list[TopicDeclaration],
    *,
    dry_run: bool = False,
    timeout: float = 30.0,
) -> list[TopicResult]:
    """Create the declared topics that do not exist and wait until the broker serves them.

    For topics outside the catalogue, such as the changelogs of the router's Faust tables.
    """
    admin = admin_client(kafka)
    existing = set(admin.list_topics(timeout=timeout).topics)
    results = [TopicResult(t[0], "exists") for t in wanted if t[0] in existing]
    missing = [t for t in wanted if t[0] not in existing]
    if dry_run:
        return results + [TopicResult(t[0], "would create") for t in missing]
    if not missing:
        return results
    futures = admin.create_topics(
        [
            NewTopic(
                name, num_partitions=partitions, replication_factor=replication, config=configs
            )
            for name, partitions, replication, configs in missing
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    for name, future in futures.items():
        try:
            future.result()
            results.append(TopicResult(name, "created"))
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            results.append(TopicResult(name, "exists"))
    _wait_until_served(admin, [t[0] for t in missing], timeout)
    return results


def _wait_until_served(admin: AdminClient, names: list[str], timeout: float) -> None:
    """Return once every partition of ``names`` has a leader: a creation is acknowledged
    before the broker serves the topic, and a client that races it gets UNKNOWN_TOPIC."""
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        topics = admin.list_topics(timeout=timeout).topics
        pending = {
            name
            for name in pending
            if name not in topics
            or topics[name].error is not None
            or any(p.leader < 0 for p in topics[name].partitions.values())
        }
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"topics not served after {timeout}s: {sorted(pending)[:5]}")
        if pending:
            time.sleep(0.05)


def delete_topics(kafka: KafkaSettings, names: list[str], timeout: float = 30.0) -> None:
    """Delete the named topics (tests clean up their uuid-prefixed topics with this)."""
    if not names:
        return
    admin = admin_client(kafka)  # kept referenced until the futures resolve
    futures = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    for future in futures.values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
