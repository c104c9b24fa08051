"""Fixtures for tests against the real local stack.

The session starts whatever part of the stack is not running (real Apache Kafka, PostgreSQL,
SMTP sink, SMS stand-in) and stops at the end exactly what it started. Each test gets its own
uuid-prefixed topics and its own uuid-named database schema, so tests never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from herald.db import migrate
from herald.devstack import stack
from herald.settings import DatabaseSettings, KafkaSettings, Settings, get_settings
from herald.topics import create_topics, delete_topics
from schemas import CATALOGUE, Catalogue
from tests.integration.services import ServiceProcess, start_service


@pytest.fixture(scope="session", autouse=True)
def local_stack() -> Iterator[Settings]:
    settings = get_settings()
    started = stack.up(settings, say=lambda line: None)
    try:
        yield settings
    finally:
        stack.down(settings, only=started, say=lambda line: None)


@pytest.fixture
def kafka_settings(local_stack: Settings) -> KafkaSettings:
    """Kafka settings whose topic prefix is unique to this test."""
    return local_stack.kafka.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:10]}."})


@pytest.fixture
def topics(kafka_settings: KafkaSettings) -> Iterator[Catalogue]:
    """Every catalogue topic created under this test's prefix; deleted afterwards."""
    catalogue = CATALOGUE.with_prefix(kafka_settings.topic_prefix)
    results = create_topics(kafka_settings, catalogue, prefix="")
    try:
        yield catalogue
    finally:
        delete_topics(kafka_settings, [r.name for r in results])


@pytest.fixture
def db_settings(local_stack: Settings) -> Iterator[DatabaseSettings]:
    """A uuid-named schema migrated to head; dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    settings = local_stack.database.model_copy(update={"database_schema": schema})
    migrate.upgrade(settings)
    try:
        yield settings
    finally:
        with psycopg.connect(settings.libpq_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def run_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start service processes for this test; every one still running is stopped afterwards.

    Usage: ``run_service("services.email_sender", env)``; on failure the logs are printed.
    """
    started: list[ServiceProcess] = []

    def run(
        module: str, env: dict[str, str], *args: str, name: str | None = None
    ) -> ServiceProcess:
        service = start_service(module, env, tmp_path / "logs", *args, name=name)
        started.append(service)
        return service

    yield run
    for service in started:
        service.stop()
    for service in started:
        print(f"----- {service.name} (exit {service.proc.returncode}) -----")
        print(service.output()[-4000:])
