"""Sender-only throughput: deliveries/s of one sender's batch handler per channel, with the
provider stand-in answering in ``--latency-ms`` (default 100).

What runs is what a sender process runs per batch, minus Kafka: :class:`SenderHandler` with
the real journal (PostgreSQL, a private schema), the real send pool (``--concurrency`` sends
in flight, threads; batches of four times that) and the real provider client (the SMS
sender's per-thread keep-alive connections, the email sender's pool of SMTP connections,
pipelined where the relay offers it, the webhook sender's signing client with the endpoints
read from PostgreSQL once per batch) against a private SMS stand-in, SMTP sink and webhook
sink. Records are built in memory and the status events it returns are not produced, so the
figure is the ceiling of the send path; the broker's share is measured by ``make bench``.
Each channel first sends ``4 x concurrency`` deliveries untimed (the window opening and the
connections), then the ``--count`` measured ones.

Run: ``python -m bench.senders [--count 6000] [--latency-ms 100] [--concurrency 512]``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import psycopg
from confluent_kafka import Message

from bench.standins import private_sms_standin, private_smtp_sink, standin
from herald.db import make_engine, migrate
from herald.devstack.process import free_port
from herald.sender import PostgresJournal, SenderHandler, SenderRoutes, SendFunction, SendPool
from herald.serde import encode
from herald.settings import DatabaseSettings, Settings, SmsSettings, get_settings
from herald.webhooks import new_secret
from schemas import CATALOGUE
from services.email_sender.service import EmailSender
from services.email_sender.smtp import SmtpEndpoint, SmtpPool
from services.sms_sender.client import SmsApi
from services.sms_sender.service import SmsSender
from services.webhook_sender.client import EndpointHttp
from services.webhook_sender.endpoints import EndpointStore
from services.webhook_sender.service import EndpointSender
from tests.integration.delivery_util import delivery_request

#: Records per batch, as a multiple of the sends in flight: a batch ends by draining its last
#: sends, so a batch only a few times the window wastes part of it (``<SENDER>_BATCH_SIZE``).
BATCH_PER_IN_FLIGHT = 4


class Record:
    """The parts of a consumed record the handler reads."""

    def __init__(self, value: bytes, topic: str, offset: int) -> None:
        self._value, self._topic, self._offset = value, topic, offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"bench"

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def headers(self) -> None:
        return None


def bench_schema(settings: Settings) -> DatabaseSettings:
    """A fresh schema migrated to head (drop it with :func:`drop_schema`)."""
    database = settings.database.model_copy(
        update={"database_schema": f"bench_{uuid.uuid4().hex[:10]}"}
    )
    migrate.upgrade(database)
    return database


def warm_up_count(concurrency: int) -> int:
    """Deliveries sent, untimed, before the measured ones: enough for the window to open."""
    return 4 * concurrency


def drop_schema(database: DatabaseSettings) -> None:
    with psycopg.connect(database.libpq_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{database.database_schema}" CASCADE')


def run(
    settings: Settings,
    channel: str,
    send: SendFunction,
    close: Callable[[], None],
    requests: list[dict[str, Any]],
    concurrency: int,
    *,
    database: DatabaseSettings | None = None,
    prepare: Callable[[list[dict[str, Any]]], None] | None = None,
    warm_up: list[dict[str, Any]] | None = None,
) -> float:
    """Deliveries/s of the handler over ``requests`` (batches of
    :data:`BATCH_PER_IN_FLIGHT` times ``concurrency``); in
    ``database`` (the caller's schema, kept) or a schema of its own (dropped)."""
    own_schema = database is None
    database = database or bench_schema(settings)
    engine = make_engine(database, pool_size=1, max_overflow=1)
    journal = PostgresJournal(engine, service=f"bench_{channel}")
    routes = SenderRoutes.for_channel(CATALOGUE, channel)
    handler = SenderHandler(
        service=f"bench_{channel}",
        routes=routes,
        catalogue=CATALOGUE,
        pool=SendPool(send, channel=channel, concurrency=concurrency),
        journal=journal,
        prepare=prepare,
    )
    records = [
        cast(Message, Record(encode("herald.DeliveryRequest", r), routes.source_topic, i))
        for i, r in enumerate(requests)
    ]
    # Untimed warm-up: the handler opens its window one success at a time (1 up to
    # ``concurrency``, halved on failures) and the pool its threads and connections on first
    # use; a running sender has done that long ago. Its own deliveries (``warm_up``).
    if warm_up:
        warm = [
            cast(Message, Record(encode("herald.DeliveryRequest", r), routes.source_topic, i))
            for i, r in enumerate(warm_up)
        ]
        handler(warm)
    try:
        started = time.monotonic()
        batch = BATCH_PER_IN_FLIGHT * concurrency
        for first in range(0, len(records), batch):
            handler(records[first : first + batch])
        return len(records) / (time.monotonic() - started)
    finally:
        handler.close()
        close()
        journal.close()
        engine.dispose()
        if own_schema:
            drop_schema(database)


def measure(count: int, latency_ms: float, concurrency: int) -> dict[str, float]:
    """Deliveries/s for SMS, email and webhooks."""
    settings = get_settings()
    results: dict[str, float] = {}
    with private_sms_standin(latency_ms) as port:
        sms = SmsSettings(sms_api_url=f"http://127.0.0.1:{port}")
        api = SmsApi(sms)
        requests, warm = (
            [delivery_request("sms", f"+4917{i:010d}", body_text="code") for i in range(n)]
            for n in (count, warm_up_count(concurrency))
        )
        results["sms"] = run(
            settings, "sms", SmsSender(api, 10), api.close, requests, concurrency, warm_up=warm
        )
    with private_smtp_sink(latency_ms) as port:
        pool = SmtpPool(SmtpEndpoint("smtp", "127.0.0.1", port), concurrency)
        send = EmailSender(pool, settings.smtp.email_from)
        requests, warm = (
            [
                delivery_request("email", f"b{i}@example.test", subject="Hi", body_text="x")
                for i in range(n)
            ]
            for n in (count, warm_up_count(concurrency))
        )
        results["email"] = run(
            settings, "email", send, pool.close, requests, concurrency, warm_up=warm
        )
    results["webhook"] = measure_webhook(settings, count, latency_ms, concurrency)
    return results


def measure_webhook(settings: Settings, count: int, latency_ms: float, concurrency: int) -> float:
    """Deliveries/s of signed webhooks, one endpoint per user (read from PostgreSQL, one query
    per batch) on a private webhook sink."""
    port = free_port()
    database = bench_schema(settings)
    users = [f"bench-{i}" for i in range(count)]
    with psycopg.connect(database.libpq_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{database.database_schema}"')
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO user_account (id) VALUES (%s)", [(u,) for u in users])
            cur.executemany(
                "INSERT INTO channel_endpoint (user_id, kind, url, secret)"
                " VALUES (%s, 'webhook', %s, %s)",
                [(u, f"http://127.0.0.1:{port}/hooks/{u}", new_secret()) for u in users],
            )
    engine = make_engine(database, pool_size=2, max_overflow=4)
    argv = ["herald.devstack.webhook_sink", "--port", str(port), "--latency-ms", str(latency_ms)]
    try:
        with standin(argv, [port], latency_ms):
            http = EndpointHttp("webhook", allow_private=True)
            send = EndpointSender("webhook", EndpointStore(engine, "webhook"), http)
            requests, warm = (
                [
                    delivery_request("webhook", f"http://127.0.0.1:{port}/hooks/{u}", user_id=u,
                                     subject="Hi", body_text="A new comment")
                    for u in chosen
                ]
                for chosen in (users, users[: warm_up_count(concurrency)])
            )  # fmt: skip
            return run(
                settings, "webhook", send, http.close, requests, concurrency,
                database=database, prepare=send.prepare, warm_up=warm,
            )  # fmt: skip
    finally:
        engine.dispose()
        drop_schema(database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6_000, help="deliveries per channel")
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--concurrency", type=int, default=512, help="sends in flight")
    args = parser.parse_args()
    results = measure(args.count, args.latency_ms, args.concurrency)
    for channel, rate in results.items():
        print(
            f"sender_{channel}_deliveries_per_s: {rate:,.0f} ({args.count} deliveries, "
            f"{args.concurrency} in flight, provider latency {args.latency_ms:g} ms)"
        )


if __name__ == "__main__":
    main()
