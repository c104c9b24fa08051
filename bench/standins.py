"""The provider stand-ins' own ceiling: requests/s each answers on loopback, latency 0 ms.

Starts a private SMS stand-in and a private SMTP sink on free loopback ports (subprocesses, a
temporary store), drives each with N concurrent clients for a bounded time and count, and
prints requests/s. The clients are plain asyncio sockets (one keep-alive HTTP/1.1 connection
or one SMTP session per client), so that the load generator costs far less than the server.

Run: ``python -m bench.standins [--seconds 5] [--concurrency 32] [--latency-ms 0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from herald.devstack.process import free_port

ACCOUNT = "ACbench0000000000000000000000000000"
CONCURRENCY = 32
# The keys :func:`ceilings` returns (bench/results/latest.json) and their rows in the table.
STANDIN_LABELS = {
    "standin_sms_max_per_s": f"SMS stand-in ceiling, requests/s ({CONCURRENCY} clients, 0 ms)",
    "standin_smtp_max_per_s": f"SMTP sink ceiling, messages/s ({CONCURRENCY} sessions, 0 ms)",
    "standin_smtp_one_connection_per_s": "SMTP sink, messages/s on one session (0 ms)",
}


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stand-in exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing answers on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def standin(argv: list[str], ports: list[int], latency_ms: float) -> Iterator[None]:
    env = {
        **os.environ,
        "HERALD_SMS_STANDIN_LATENCY_MS": str(latency_ms),
        "HERALD_SMTP_SINK_LATENCY_MS": str(latency_ms),
    }
    proc = subprocess.Popen([sys.executable, "-m", *argv], env=env)
    try:
        for port in ports:
            wait_port(port, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def _read_http_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _sms_client(port: int, deadline: float, budget: list[int], done: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    path = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    try:
        while budget[0] > 0 and time.monotonic() < deadline:
            budget[0] -= 1
            body = f"To=%2B1555{budget[0] % 10_000_000:07d}&From=Herald&Body=bench+ping".encode()
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Authorization: Basic QUNiZW5jaDp0b2tlbg==\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"I-Twilio-Idempotency-Token: {uuid.uuid4().hex}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            status = await _read_http_response(reader)
            if status != 201:
                raise RuntimeError(f"SMS stand-in answered {status}")
            done[0] += 1
    finally:
        writer.close()


async def _smtp_reply(reader: asyncio.StreamReader) -> str:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("SMTP sink closed the connection")
        if line[3:4] != b"-":
            return line.decode()


async def _smtp_client(port: int, deadline: float, budget: list[int], done: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def command(line: bytes, expect: str) -> None:
        writer.write(line)
        reply = await _smtp_reply(reader)
        if not reply.startswith(expect):
            raise RuntimeError(f"SMTP sink answered {reply.strip()!r} to {line[:20]!r}")

    try:
        await _smtp_reply(reader)
        await command(b"EHLO bench.example\r\n", "250")
        while budget[0] > 0 and time.monotonic() < deadline:
            budget[0] -= 1
            n = budget[0]
            await command(b"MAIL FROM:<herald@bench.example>\r\n", "250")
            await command(f"RCPT TO:<user{n}@bench.example>\r\n".encode(), "250")
            await command(b"DATA\r\n", "354")
            await command(
                f"From: herald@bench.example\r\nTo: user{n}@bench.example\r\n"
                f"Subject: Ping {n}\r\nMessage-ID: <{uuid.uuid4().hex}@bench.example>\r\n\r\n"
                f"Ping number {n}\r\n.\r\n".encode(),
                "250",
            )
            done[0] += 1
        writer.write(b"QUIT\r\n")
    finally:
        writer.close()


Client = Callable[[int, float, list[int], list[int]], Awaitable[None]]


async def _drive(client: Client, port: int, concurrency: int, seconds: float, limit: int) -> float:
    budget, done = [limit], [0]
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(client(port, deadline, budget, done) for _ in range(concurrency)))
    return done[0] / (time.monotonic() - started)


@contextmanager
def private_sms_standin(latency_ms: float, *, store: bool = False) -> Iterator[int]:
    """An SMS stand-in of our own on a free loopback port (its port), answering in
    ``latency_ms``; with ``store``, it also writes every message to a temporary file."""
    port = free_port()
    argv = ["herald.devstack.sms_standin", "--host", "127.0.0.1", "--port", str(port)]
    with tempfile.TemporaryDirectory(prefix="herald-bench-sms-") as tmp:
        if store:
            argv += ["--store", str(Path(tmp) / "messages.jsonl")]
        with standin(argv, [port], latency_ms):
            yield port


@contextmanager
def private_smtp_sink(latency_ms: float) -> Iterator[int]:
    """An SMTP sink of our own on a free loopback port (its SMTP port), answering in
    ``latency_ms``, its store in a temporary folder."""
    port, api_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="herald-bench-smtp-") as tmp:
        argv = ["herald.devstack.smtp_sink", "--host", "127.0.0.1", "--port", str(port),
                "--api-port", str(api_port), "--store", str(Path(tmp) / "messages")]  # fmt: skip
        with standin(argv, [port, api_port], latency_ms):
            yield port


def measure_sms(concurrency: int, seconds: float, limit: int, latency_ms: float = 0) -> float:
    """Requests/s of a private SMS stand-in under ``concurrency`` keep-alive clients."""
    with private_sms_standin(latency_ms, store=True) as port:
        return asyncio.run(_drive(_sms_client, port, concurrency, seconds, limit))


def measure_smtp(concurrency: int, seconds: float, limit: int, latency_ms: float = 0) -> float:
    """Messages/s of a private SMTP sink under ``concurrency`` SMTP sessions."""
    with private_smtp_sink(latency_ms) as port:
        return asyncio.run(_drive(_smtp_client, port, concurrency, seconds, limit))


def ceilings(seconds: float = 5, limit: int = 200_000) -> dict[str, float]:
    """The stand-ins' own ceilings at 0 ms latency, under the keys of :data:`STANDIN_LABELS`."""
    return {
        "standin_sms_max_per_s": round(measure_sms(CONCURRENCY, seconds, limit), 1),
        "standin_smtp_max_per_s": round(measure_smtp(CONCURRENCY, seconds, limit), 1),
        "standin_smtp_one_connection_per_s": round(measure_smtp(1, seconds, limit), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5, help="time bound of each run")
    parser.add_argument("--requests", type=int, default=200_000, help="count bound of each run")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="concurrent clients")
    parser.add_argument("--latency-ms", type=float, default=0, help="the stand-ins' latency")
    parser.add_argument("--only", choices=["sms", "smtp"], default=None)
    args = parser.parse_args()
    result: dict[str, float] = {}
    if args.only != "smtp":
        result["sms_per_s"] = round(
            measure_sms(args.concurrency, args.seconds, args.requests, args.latency_ms), 1
        )
    if args.only != "sms":
        result["smtp_per_s"] = round(
            measure_smtp(args.concurrency, args.seconds, args.requests, args.latency_ms), 1
        )
    print(json.dumps({**vars(args), **result}))


if __name__ == "__main__":
    main()
