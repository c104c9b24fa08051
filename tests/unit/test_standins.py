"""The provider stand-ins (SMS, SMTP sink), served in-process on free loopback ports."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from herald.devstack.process import free_port
from herald.devstack.sms_standin import Provider, create_server
from herald.devstack.smtp_sink import LOG_NAME, FastSMTP, Handler, Sink, create_api

ACCOUNT = "ACtest"
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
LATENCY_MS = 200
CONCURRENT = 10


@pytest.fixture
async def sms(tmp_path: Path) -> AsyncIterator[tuple[Provider, httpx.AsyncClient]]:
    provider = Provider(tmp_path / "messages.jsonl")
    port = free_port()
    server = await create_server(provider).start("127.0.0.1", port)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_connections=50)
    ) as client:
        yield provider, client
    server.close()


def send(client: httpx.AsyncClient, to: str, key: str | None = None) -> Any:
    headers = {"I-Twilio-Idempotency-Token": key} if key else {}
    return client.post(MESSAGES, data={"To": to, "From": "Herald", "Body": "hi"}, headers=headers)


async def test_sms_accepts_lists_dedups_and_stores(sms: tuple[Provider, httpx.AsyncClient]) -> None:
    provider, client = sms
    first = await send(client, "+4915112345678", key="k1")
    again = await send(client, "+4915112345678", key="k1")
    bad = await send(client, "12345")
    missing = await client.post(MESSAGES, data={"To": "+4915112345678"})
    assert first.status_code == 201 and again.status_code == 201
    assert again.json()["sid"] == first.json()["sid"]
    assert bad.status_code == 400 and bad.json()["code"] == 21211
    assert missing.status_code == 422
    listed = (await client.get(MESSAGES)).json()["messages"]
    assert [m["sid"] for m in listed] == [first.json()["sid"]]
    assert (await client.get("/2010-04-01/Accounts/ACother/Messages.json")).json() == {
        "messages": []
    }
    assert [entry["status"] for entry in (await client.get("/control/log")).json()] == [
        201,
        200,
        400,
    ]
    assert (await client.get("/nowhere")).status_code == 404
    assert provider.store is not None
    provider.flush()
    stored = [json.loads(line) for line in provider.store.read_text().splitlines()]
    assert [m["sid"] for m in stored] == [first.json()["sid"]]


async def test_sms_faults_by_prefix(sms: tuple[Provider, httpx.AsyncClient]) -> None:
    _, client = sms
    fault = {"status": 503, "count": 1, "to_prefix": "+4917", "retry_after": 2}
    assert (await client.post("/control/fail", json=fault)).status_code == 200
    assert (await client.post("/control/fail", json={"status": "x"})).status_code == 400
    failed = await send(client, "+491700000001")
    other = await send(client, "+491600000001")
    after = await send(client, "+491700000001")
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "2"
    assert other.status_code == 201 and after.status_code == 201


async def test_sms_latency_is_per_request_not_serialized(
    sms: tuple[Provider, httpx.AsyncClient],
) -> None:
    provider, client = sms
    answer = await client.post("/control/latency", json={"ms": LATENCY_MS})
    assert answer.json() == {"ms": LATENCY_MS}
    assert provider.latency_ms == LATENCY_MS

    async def timed(i: int) -> float:
        started = time.perf_counter()
        response = await send(client, f"+49151{i:08d}")
        assert response.status_code == 201
        return time.perf_counter() - started

    started = time.perf_counter()
    took = await asyncio.gather(*(timed(i) for i in range(CONCURRENT)))
    total = time.perf_counter() - started
    assert min(took) >= LATENCY_MS / 1000
    # Serialized, the ten would take 2 s; concurrent, about one latency.
    assert total < CONCURRENT * LATENCY_MS / 1000 / 3
    await client.post("/control/latency", json={"ms": 0})
    started = time.perf_counter()
    await send(client, "+4915100000000")
    assert time.perf_counter() - started < LATENCY_MS / 1000


@pytest.fixture
async def smtp(tmp_path: Path) -> AsyncIterator[tuple[Sink, int, httpx.AsyncClient]]:
    sink = Sink(tmp_path / "store")
    loop = asyncio.get_running_loop()
    port, api_port = free_port(), free_port()
    handler = Handler(sink)
    server = await loop.create_server(
        lambda: FastSMTP(handler, hostname="sink.test", enable_SMTPUTF8=True), "127.0.0.1", port
    )
    api = await create_api(sink).start("127.0.0.1", api_port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as client:
        yield sink, port, client
    server.close()
    api.close()


def mail(port: int, to: str, subject: str = "Hello") -> float:
    """Send one message with smtplib (blocking; run it in a thread); return the seconds taken."""
    message = EmailMessage()
    message["From"] = "Herald <notifications@herald.test>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{to.replace('@', '.')}@herald.test>"
    message.set_content("body")
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.send_message(message)
    return time.perf_counter() - started


async def test_smtp_sink_stores_faults_and_survives_restart(
    smtp: tuple[Sink, int, httpx.AsyncClient],
) -> None:
    sink, port, client = smtp
    fault = {"code": 550, "message": "no such user", "rcpt": "gone@"}
    assert (await client.post("/faults", json=fault)).status_code == 201
    await asyncio.to_thread(mail, port, "bob@example.test", "Grüße")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await asyncio.to_thread(mail, port, "gone@example.test")
    messages = (await client.get("/messages")).json()
    assert [(m["rcpt_tos"], m["subject"]) for m in messages] == [(["bob@example.test"], "Grüße")]
    assert messages[0]["message_id"] == "<bob.example.test@herald.test>"
    assert [e["reply"][:3] for e in (await client.get("/log")).json()] == ["250", "550"]
    sink.flush()
    assert (sink.store / LOG_NAME).exists()
    reloaded = Sink(sink.store)
    assert [m["id"] for m in reloaded.messages()] == [messages[0]["id"]]
    assert (await client.delete("/messages")).status_code == 200
    assert (await client.get("/messages")).json() == []
    assert Sink(sink.store).messages() == []


async def test_smtp_latency_is_per_session_not_serialized(
    smtp: tuple[Sink, int, httpx.AsyncClient],
) -> None:
    sink, port, client = smtp
    assert (await client.post("/latency", json={"ms": LATENCY_MS})).json() == {"ms": LATENCY_MS}
    assert sink.latency_ms == LATENCY_MS
    started = time.perf_counter()
    took = await asyncio.gather(
        *(asyncio.to_thread(mail, port, f"user{i}@example.test") for i in range(CONCURRENT))
    )
    total = time.perf_counter() - started
    assert min(took) >= LATENCY_MS / 1000
    assert total < CONCURRENT * LATENCY_MS / 1000 / 3
    assert len((await client.get("/messages")).json()) == CONCURRENT
