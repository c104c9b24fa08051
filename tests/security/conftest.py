"""The integration fixtures (the real local stack, per-test topics and schemas, service
processes, the whole pipeline), shared with the security tests."""

from tests.integration.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    db_settings,
    kafka_settings,
    local_stack,
    pipeline,
    pipeline_env,
    prefix,
    run_service,
    topics,
)
