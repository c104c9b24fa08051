"""Fixtures for tests against the real local stack.

The session starts whatever part of the stack is not running (real Apache Kafka, PostgreSQL,
SMTP sink, SMS stand-in) and stops at the end exactly what it started. Each test gets its own
uuid-prefixed topics and its own uuid-named database schema, so tests never see each other's data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from examples.publish_event import encode_event
from herald.auth import LOCAL_ADMIN_API_KEY
from herald.db import migrate
from herald.devstack import stack
from herald.settings import DatabaseSettings, KafkaSettings, Settings, get_settings
from herald.topics import admin_client, create_topics, delete_topics
from schemas import CATALOGUE, Catalogue
from tests.containers import container_stack, selected_backend
from tests.integration.pipeline import PIPELINE_SERVICES, Pipeline, free_port, wait_for
from tests.integration.services import ServiceProcess, service_env, start_service


@pytest.fixture(scope="session", autouse=True)
def local_stack() -> Iterator[Settings]:
    if selected_backend() == "testcontainers":  # HERALD_TESTCONTAINERS=1: tests/containers.py
        with container_stack() as container_settings:
            yield container_settings
        return
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
def prefix(kafka_settings: KafkaSettings) -> Iterator[str]:
    """This test's topic prefix (unique to it); afterwards every topic with that prefix is
    deleted (the router's Faust changelog topics too)."""
    yield kafka_settings.topic_prefix
    existing = admin_client(kafka_settings).list_topics(timeout=10).topics
    prefix = kafka_settings.topic_prefix
    delete_topics(kafka_settings, [name for name in existing if name.startswith(prefix)])


@pytest.fixture
def topics(kafka_settings: KafkaSettings, prefix: str) -> Catalogue:
    """Every catalogue topic created under this test's prefix (deleted afterwards)."""
    catalogue = CATALOGUE.with_prefix(prefix)
    create_topics(kafka_settings, catalogue, prefix="")
    return catalogue


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


@pytest.fixture
def pipeline_env() -> dict[str, str]:
    """Extra environment for the ``pipeline`` services; override it to configure them."""
    return {}


@pytest.fixture
def pipeline(
    pipeline_env: dict[str, str],
    local_stack: Settings,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
    db_settings: DatabaseSettings,
    run_service: Callable[..., ServiceProcess],
) -> Iterator[Pipeline]:
    """Every service running on this test's topics and schema, ingest and read APIs ready.

    Yields :class:`herald.demo.System`; its ``publish`` encodes events with the plain-fastavro
    example producer (Herald's public contract), not Herald's own serde.
    """
    ingest_port, read_port = free_port(), free_port()
    metrics_ports_off = {
        "ROUTER_METRICS_PORT": "0",
        "EMAIL_SENDER_METRICS_PORT": "0",
        "SMS_SENDER_METRICS_PORT": "0",
        "WEBHOOK_SENDER_METRICS_PORT": "0",
        "SLACK_SENDER_METRICS_PORT": "0",
        "INAPP_STORE_METRICS_PORT": "0",
        "INGEST_METRICS_PORT": "0",
    }
    env = service_env(
        kafka_settings,
        db_settings,
        HERALD_INGEST_PORT=str(ingest_port),
        HERALD_READ_API_PORT=str(read_port),
        **{**metrics_ports_off, **pipeline_env},  # pipeline_env may give them ports
    )
    for module in PIPELINE_SERVICES:
        run_service(module, env)
    local = local_stack.local.model_copy(
        update={"ingest_port": ingest_port, "read_api_port": read_port}
    )
    settings = local_stack.model_copy(
        update={"kafka": kafka_settings, "database": db_settings, "local": local}
    )
    headers = {"X-API-Key": LOCAL_ADMIN_API_KEY}
    with (
        httpx.Client(
            base_url=f"http://127.0.0.1:{ingest_port}", timeout=15, headers=headers
        ) as api,
        httpx.Client(base_url=f"http://127.0.0.1:{read_port}", timeout=15, headers=headers) as read,
    ):
        for client in (api, read):

            def ready(client: httpx.Client = client) -> bool:
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(ready, 60, f"{client.base_url} to be ready")
        yield Pipeline(api, settings, read_api=read, timeout=90, encode_event=encode_event)
