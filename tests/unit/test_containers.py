"""The choice between the local stack and testcontainers (tests/containers.py), without Docker."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.containers import (
    ENV_VAR,
    KAFKA_IMAGE,
    BackendUnavailable,
    choose_backend,
    container_environment,
    container_settings,
)


def never(what: str) -> Callable[[], bool]:
    def called() -> bool:
        raise AssertionError(f"{what} was checked although containers were not asked for")

    return called


def yes() -> bool:
    return True


def no() -> bool:
    return False


@pytest.mark.parametrize("value", [None, "", "0", "false", "No", " off "])
def test_local_stack_unless_asked_and_nothing_probed(value: str | None) -> None:
    env = {} if value is None else {ENV_VAR: value}
    backend = choose_backend(env, docker_answers=never("docker"), package_installed=never("pkg"))
    assert backend == "local"


@pytest.mark.parametrize("value", ["1", "true", "YES", " on"])
def test_containers_when_asked_and_available(value: str) -> None:
    assert choose_backend({ENV_VAR: value}, docker_answers=yes, package_installed=yes) == (
        "testcontainers"
    )


def test_no_docker_engine_is_an_error_not_a_fallback() -> None:
    with pytest.raises(BackendUnavailable) as raised:
        choose_backend({ENV_VAR: "1"}, docker_answers=no, package_installed=yes)
    message = str(raised.value)
    assert "Docker engine" in message
    assert f"unset {ENV_VAR}" in message


def test_missing_package_is_named_with_the_extra_to_install() -> None:
    with pytest.raises(BackendUnavailable) as raised:
        choose_backend({ENV_VAR: "1"}, docker_answers=never("docker"), package_installed=no)
    assert "testcontainers" in str(raised.value)
    assert ".[dev,testcontainers]" in str(raised.value)


def test_an_unclear_value_is_refused() -> None:
    with pytest.raises(BackendUnavailable, match="neither on nor off"):
        choose_backend({ENV_VAR: "docker"}, docker_answers=yes, package_installed=yes)


@pytest.mark.parametrize(
    "addresses",
    [
        {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092"},
        {"DATABASE_URL": "postgresql://herald@db/herald"},
        {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092", "DATABASE_URL": "postgresql://db/herald"},
    ],
)
def test_containers_and_explicit_addresses_contradict(addresses: dict[str, str]) -> None:
    with pytest.raises(BackendUnavailable) as raised:
        choose_backend({ENV_VAR: "1", **addresses}, docker_answers=yes, package_installed=yes)
    for name in addresses:
        assert name in str(raised.value)


def test_explicit_addresses_alone_keep_the_local_path() -> None:
    """The local stack already leaves parts whose variables point elsewhere alone."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": "broker:9092"}
    assert choose_backend(env, docker_answers=never("docker")) == "local"


def test_settings_and_environment_point_at_the_containers() -> None:
    url = "postgresql+psycopg://herald:herald@localhost:32768/herald"
    settings = container_settings("localhost:32769", url)
    assert settings.kafka.bootstrap_servers == "localhost:32769"
    assert settings.database.database_url == url
    assert settings.database.address == ("localhost", 32768)
    assert container_environment("localhost:32769", url) == {
        "KAFKA_BOOTSTRAP_SERVERS": "localhost:32769",
        "DATABASE_URL": url,
    }


def test_kafka_image_matches_the_local_stack_version() -> None:
    """Confluent Platform 7.9 ships Apache Kafka 3.9, the local stack's (deploy/kafka/pom.xml)."""
    from herald.devstack.components import kafka_version

    assert kafka_version().startswith("3.9.")
    assert KAFKA_IMAGE.split(":")[1].startswith("7.9.")
