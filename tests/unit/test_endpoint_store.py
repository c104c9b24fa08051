"""services.webhook_sender.endpoints: a database that does not answer is a transient fault."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from herald.errors import RetryableError
from services.webhook_sender.endpoints import EndpointStore


def test_a_database_that_does_not_answer_never_escapes_as_a_crash() -> None:
    # Nothing listens on port 1: every connection is refused at once.
    engine = create_engine("postgresql+psycopg://herald@127.0.0.1:1/herald")
    store = EndpointStore(engine, "webhook")
    store.prefetch(["ada", "bob"])  # logged; the batch falls back to single reads
    with pytest.raises(RetryableError) as caught:
        store.get("ada")  # raised before anything is posted: the claim is released
    assert caught.value.error_class == "endpoint.db"
    assert store.disable("ada", "https://example.com/h", "HTTP 410") is False
    engine.dispose()
