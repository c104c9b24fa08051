"""Running Herald's services as real processes in tests (see herald.supervisor)."""

from __future__ import annotations

from herald.settings import DatabaseSettings, KafkaSettings
from herald.supervisor import ServiceProcess, start_service

__all__ = ["TEST_RETRY_DELAYS_MS", "ServiceProcess", "service_env", "start_service"]

#: Short retry tiers for tests (the catalogue's defaults are 30 s, 5 min, 30 min).
TEST_RETRY_DELAYS_MS = "500,1000,2000"


def service_env(
    kafka: KafkaSettings, database: DatabaseSettings | None = None, **extra: str
) -> dict[str, str]:
    """Environment for a service process bound to this test's topics and schema."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "HERALD_RETRY_DELAYS_MS": TEST_RETRY_DELAYS_MS,
        "PYTHONUNBUFFERED": "1",
    }
    if database is not None:
        env["DATABASE_URL"] = database.database_url
        env["DATABASE_SCHEMA"] = database.database_schema
    env.update(extra)
    return env
