"""Where the integration tests get Kafka and PostgreSQL: the local stack, or containers.

By default the ``local_stack`` fixture (tests/integration/conftest.py) runs the local stack
(``herald dev up``). With ``HERALD_TESTCONTAINERS=1``, on a machine whose Docker engine answers
and with the ``testcontainers`` extra installed (``pip install -e '.[dev,testcontainers]'``),
it starts a Kafka container and a PostgreSQL container instead, points
``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` at them for the whole session (so the
service processes the tests start use them too), and starts only the SMTP sink and the SMS
stand-in locally.

:func:`choose_backend` is the selection, pure and unit-tested (tests/unit/test_containers.py).
The container path itself is untested on the project's machines: they have no Docker engine.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from herald.settings import DatabaseSettings, KafkaSettings, Settings

#: The switch: ``1`` (or true/yes/on) for containers; unset, empty or ``0`` for the local stack.
ENV_VAR = "HERALD_TESTCONTAINERS"
#: testcontainers' KafkaContainer drives Confluent's image; 7.9 ships Apache Kafka 3.9, the
#: version of the local stack (deploy/kafka/pom.xml). KRaft mode, no ZooKeeper.
KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"
#: The PostgreSQL of deploy/compose/compose.yaml (the machines' own server is 15 as well).
POSTGRES_IMAGE = "postgres:15.18"
#: Broker settings of the local stack (herald.devstack.components.Kafka) that tests rely on:
#: topics only from the catalogue, short session timeouts, a log cleaner that looks often.
KAFKA_BROKER_ENV = {
    "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    "KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
    "KAFKA_LOG_CLEANER_BACKOFF_MS": "500",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
}
#: The variables the containers' addresses go into; set by hand, they would contradict them.
ADDRESS_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
#: How long a container may take to answer after it started (the first run also pulls images).
START_TIMEOUT_S = 180

Backend = Literal["local", "testcontainers"]

_ON = frozenset({"1", "true", "yes", "on"})
_OFF = frozenset({"", "0", "false", "no", "off"})


class BackendUnavailable(RuntimeError):
    """``HERALD_TESTCONTAINERS`` asks for something this machine cannot give; the message says
    what is missing and how to go on."""


def testcontainers_installed() -> bool:
    """Whether the ``testcontainers`` package can be imported."""
    return importlib.util.find_spec("testcontainers") is not None


def docker_engine_answers(timeout: float = 5.0) -> bool:
    """Whether a Docker engine answers a ping where testcontainers will look for one
    (``DOCKER_HOST``, else the default socket), through the Docker SDK it depends on."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=int(timeout))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def choose_backend(
    env: Mapping[str, str],
    docker_answers: Callable[[], bool] = docker_engine_answers,
    package_installed: Callable[[], bool] = testcontainers_installed,
) -> Backend:
    """``"local"`` or ``"testcontainers"``, from ``env`` (the process environment).

    ``docker_answers`` and ``package_installed`` are only called when ``env`` asks for
    containers. Raises :class:`BackendUnavailable` when it does and they cannot be had: the
    value is not a yes/no, ``KAFKA_BOOTSTRAP_SERVERS``/``DATABASE_URL`` already name a broker
    or database, the package is missing, or no Docker engine answers. Never falls back to the
    local stack silently: whoever set the variable wants to know.
    """
    raw = env.get(ENV_VAR, "")
    value = raw.strip().lower()
    if value in _OFF:
        return "local"
    if value not in _ON:
        raise BackendUnavailable(
            f"{ENV_VAR}={raw!r} is neither on nor off: set it to 1 for Kafka and PostgreSQL "
            "containers, or unset it (or 0) for the local stack"
        )
    conflicting = [name for name in ADDRESS_VARS if env.get(name)]
    if conflicting:
        raise BackendUnavailable(
            f"{ENV_VAR}=1 starts Kafka and PostgreSQL containers, but {' and '.join(conflicting)} "
            f"already {'name' if len(conflicting) > 1 else 'names'} one: unset "
            f"{'them' if len(conflicting) > 1 else 'it'}, or unset {ENV_VAR} to use "
            f"{'those' if len(conflicting) > 1 else 'that'} instead"
        )
    if not package_installed():
        raise BackendUnavailable(
            f"{ENV_VAR}=1 needs the testcontainers package: pip install -e '.[dev,testcontainers]'"
            f" (or unset {ENV_VAR} to use the local stack)"
        )
    if not docker_answers():
        raise BackendUnavailable(
            f"{ENV_VAR}=1 needs a Docker engine, and none answers (DOCKER_HOST or the default "
            f"socket): start one, or unset {ENV_VAR} to use the local stack"
        )
    return "testcontainers"


def selected_backend() -> Backend:
    """:func:`choose_backend` for this process's environment (what the fixture calls)."""
    return choose_backend(os.environ)


def container_settings(bootstrap_servers: str, database_url: str) -> Settings:
    """Settings whose Kafka and PostgreSQL are the containers' (the rest as the environment
    says: the SMTP sink and SMS stand-in stay local)."""
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap_servers),
        database=DatabaseSettings(database_url=database_url),
    )


def container_environment(bootstrap_servers: str, database_url: str) -> dict[str, str]:
    """The variables that send Herald's code and the service processes to the containers."""
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers, "DATABASE_URL": database_url}


def _container_classes() -> tuple[Any, Any]:
    try:  # testcontainers >= 4.14 keeps the modules under testcontainers.community
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer
    return KafkaContainer, PostgresContainer


@contextmanager
def running_containers(
    kafka_image: str = KAFKA_IMAGE, postgres_image: str = POSTGRES_IMAGE
) -> Iterator[tuple[str, str]]:
    """Start a Kafka (KRaft) and a PostgreSQL container; yield the bootstrap servers and a
    ``postgresql+psycopg://`` URL; remove both afterwards (testcontainers' reaper removes
    them too if this process dies)."""
    kafka_class, postgres_class = _container_classes()
    kafka = kafka_class(kafka_image).with_kraft()
    for name, value in KAFKA_BROKER_ENV.items():
        kafka.with_env(name, value)
    postgres = postgres_class(
        postgres_image, username="herald", password="herald", dbname="herald", driver="psycopg"
    )
    started: list[Any] = []
    try:
        kafka.start(timeout=START_TIMEOUT_S)
        started.append(kafka)
        postgres.start()
        started.append(postgres)
        yield kafka.get_bootstrap_server(), postgres.get_connection_url()
    finally:
        for container in reversed(started):
            container.stop()


@contextmanager
def container_stack() -> Iterator[Settings]:
    """What the ``local_stack`` fixture yields under ``HERALD_TESTCONTAINERS=1``: containers
    for Kafka and PostgreSQL, the local SMTP sink and SMS stand-in (``herald dev up`` leaves
    the parts whose variables point elsewhere alone), and the process environment pointing at
    the containers until the end, when everything is stopped and the environment restored."""
    from herald.devstack import stack
    from herald.settings import get_settings

    with running_containers() as (bootstrap_servers, database_url):
        saved = {name: os.environ.get(name) for name in ADDRESS_VARS}
        os.environ.update(container_environment(bootstrap_servers, database_url))
        get_settings.cache_clear()
        settings = container_settings(bootstrap_servers, database_url)
        started: list[str] = []
        try:
            started = stack.up(settings, say=lambda line: None)
            yield settings
        finally:
            stack.down(settings, only=started, say=lambda line: None)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            get_settings.cache_clear()
