"""An SMTP server for the local stack: accepts every message and stores it for inspection.

SMTP (aiosmtpd) on ``--port``; a small HTTP API on ``--api-port``:

- ``GET /messages`` every stored message (envelope, headers, raw text); ``DELETE /messages``
- ``POST /faults`` ``{"code": 451, "message": "try later", "count": 2, "rcpt": "bob@"}``
  answers the next ``count`` matching RCPT commands with that reply (``count`` null = always);
  ``DELETE /faults`` clears them. Tests use it to play a flaky or rejecting mail server.
- ``GET /log`` every RCPT seen with the reply given.
- ``POST /latency`` ``{"ms": 100}`` (``GET`` reads it): how long the sink waits before it
  answers the end of a message's DATA, without holding up other sessions; the start value
  comes from ``--latency-ms`` or ``HERALD_SMTP_SINK_LATENCY_MS`` (default 0).

SMTP sessions and the API share one event loop; messages are kept in memory and appended to
``DIR/messages.jsonl`` in batches (no fsync), which is read back at start, so the sink keeps
its messages across a restart.

Run: ``python -m herald.devstack.smtp_sink --port 12525 --api-port 12526 --store DIR``.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from herald.devstack.httpd import (
    HttpServer,
    Request,
    Response,
    control_routes,
    run_until_signalled,
    standin_parser,
)

LATENCY_ENV = "HERALD_SMTP_SINK_LATENCY_MS"
LOG_NAME = "messages.jsonl"
FLUSH_SECONDS = 0.2
_HEADERS = email.parser.BytesParser(policy=email.policy.default)
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*"
_PLAIN_ADDRESS = re.compile(rf"\s*<({_ATOM}@{_ATOM})>\s*")


class FastSMTP(SMTP):
    """aiosmtpd's server, with a fast path for plain ``<local@domain>`` MAIL/RCPT arguments.

    aiosmtpd parses every address with the email package's full RFC 5322 header parser (and
    defines a class on each call); that was most of the sink's CPU. Anything that is not a
    plain dot-atom address still goes through it.
    """

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _PLAIN_ADDRESS.match(arg)
        if match is None:
            return super()._getaddr(arg)
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, arg[match.end() :]


class Sink:
    """Stored messages, injected faults and the RCPT log; touched only from the event loop."""

    def __init__(self, store: Path, latency_ms: float = 0.0) -> None:
        self.store = store
        self.store.mkdir(parents=True, exist_ok=True)
        self.latency_ms = latency_ms
        self.faults: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = self._load()
        self.pending: list[dict[str, Any]] = []  # not in the log file yet

    def _load(self) -> list[dict[str, Any]]:
        """Messages kept by an earlier run: one file each (older sinks), then the log."""
        out: list[dict[str, Any]] = []
        for path in sorted(self.store.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        log = self.store / LOG_NAME
        if log.exists():
            for line in log.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a kill
        return out

    def fault_for(self, rcpt: str) -> str | None:
        for fault in self.faults:
            if fault.get("rcpt") and fault["rcpt"] not in rcpt:
                continue
            if fault.get("count") is not None:
                if fault["count"] <= 0:
                    continue
                fault["count"] -= 1
            return f"{int(fault['code'])} {fault.get('message') or 'injected fault'}"
        return None

    def record(self, rcpt: str, reply: str) -> None:
        self.log.append({"rcpt": rcpt, "reply": reply, "at": time.time()})

    def save(self, envelope: Envelope) -> None:
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        entry = {
            "id": uuid.uuid4().hex,
            "received_at": time.time(),
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "raw": raw.decode("utf-8", "replace"),
        }
        self.entries.append(entry)
        self.pending.append(entry)

    @staticmethod
    def _complete(entry: dict[str, Any]) -> dict[str, Any]:
        """Subject and Message-ID, parsed when first asked for, not on the SMTP path."""
        if "subject" not in entry:
            headers = _HEADERS.parsebytes(entry["raw"].encode("utf-8", "replace"), headersonly=True)
            entry["subject"] = str(headers.get("Subject", ""))
            entry["message_id"] = str(headers.get("Message-ID", ""))
        return entry

    def messages(self) -> list[dict[str, Any]]:
        return [self._complete(entry) for entry in self.entries]

    def flush(self) -> None:
        """Append the pending messages to the log in one write (no fsync)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        with open(self.store / LOG_NAME, "a") as fh:
            fh.write("".join(json.dumps(entry) + "\n" for entry in pending))

    def clear(self) -> None:
        for path in self.store.glob("*.json"):
            path.unlink(missing_ok=True)
        (self.store / LOG_NAME).unlink(missing_ok=True)
        self.entries.clear()
        self.pending.clear()
        self.log.clear()


class Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list[str]:
        """Offer PIPELINING (RFC 2920), as production relays do: aiosmtpd reads commands in
        order from its stream, so a client's MAIL, RCPT and DATA in one write are answered
        in turn."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.sink.fault_for(address)
        if reply is None:
            envelope.rcpt_tos.append(address)
            reply = "250 OK"
        self.sink.record(address, reply)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.latency_ms > 0:
            await asyncio.sleep(self.sink.latency_ms / 1000)
        self.sink.save(envelope)
        return "250 Message accepted for delivery"


def create_api(sink: Sink) -> HttpServer:
    api = HttpServer()

    def under(prefix: str) -> Any:
        return lambda path: path.startswith(prefix)

    @api.route("GET", under("/messages"))
    async def get_messages(request: Request) -> Response:
        return Response(200, sink.messages())

    @api.route("DELETE", under("/messages"))
    async def clear_messages(request: Request) -> Response:
        sink.clear()
        return Response(200, {"status": "cleared"})

    @api.route("GET", under("/log"))
    async def get_log(request: Request) -> Response:
        return Response(200, list(sink.log))

    @api.route("POST", under("/faults"))
    async def add_fault(request: Request) -> Response:
        try:
            fault = request.json()
            int(fault["code"])
        except (ValueError, KeyError, TypeError):
            return Response(400, {"detail": "body must be JSON with an integer 'code'"})
        sink.faults.append(fault)
        return Response(201, fault)

    @api.route("DELETE", under("/faults"))
    async def clear_faults(request: Request) -> Response:
        sink.faults.clear()
        return Response(200, {"status": "cleared"})

    control_routes(api, under("/latency"), under("/healthz"), sink)

    return api


async def serve(host: str, port: int, api_port: int, sink: Sink) -> None:
    loop = asyncio.get_running_loop()
    handler = Handler(sink)
    fqdn = socket.getfqdn()  # aiosmtpd would look it up again for every connection
    smtp = await loop.create_server(
        lambda: FastSMTP(handler, hostname=fqdn, enable_SMTPUTF8=True), host, port, backlog=1024
    )
    api = await create_api(sink).start(host, api_port)
    print(f"smtp sink on {host}:{port}, API on {host}:{api_port}", flush=True)
    try:
        await run_until_signalled(sink.flush, FLUSH_SECONDS)
    finally:
        smtp.close()
        api.close()


def main() -> None:
    description = __doc__.splitlines()[0] if __doc__ else None
    parser = standin_parser(description, LATENCY_ENV, "the end of DATA")
    parser.add_argument("--api-port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.api_port, Sink(args.store, args.latency_ms)))


if __name__ == "__main__":
    main()
