"""An SMS provider stand-in with the shape of a real provider's REST API (Twilio's Messages).

- ``POST /2010-04-01/Accounts/{sid}/Messages.json`` form fields ``To``, ``From``, ``Body``;
  HTTP basic auth (account sid, token); ``I-Twilio-Idempotency-Token`` or ``Idempotency-Key``
  makes a re-send return the first message instead of sending again. Answers 201 with
  ``{"sid": "SM…", "status": "queued", "num_segments": …}``; 400 with a provider error code
  for an invalid ``To`` (code 21211, as the real one does).
- ``GET /2010-04-01/Accounts/{sid}/Messages.json`` lists messages (``{"messages": [...]}``).
- Test controls: ``POST /control/fail`` ``{"status": 503, "count": 3, "to_prefix": "+4917"}``
  (count null = until cleared; ``to_prefix`` limits the fault to numbers starting with it, so
  tests sharing the stand-in do not disturb each other), ``DELETE /control/fail`` (all, or
  ``?to_prefix=`` only that one), ``GET /control/log`` (every request with its answer),
  ``DELETE /control/messages``.
- Answer latency: ``POST /control/latency`` ``{"ms": 100}`` (``GET`` reads it); the start
  value comes from ``--latency-ms`` or ``HERALD_SMS_STANDIN_LATENCY_MS`` (default 0). Each
  message post waits that long before its answer, without holding up other connections.

Everything is kept in memory on one event loop (no locks, no thread pool); accepted messages
are also appended to ``--store`` (JSON lines), written in batches and never fsynced.

Run: ``python -m herald.devstack.sms_standin --port 18025 --store FILE``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

from herald.devstack.httpd import (
    HttpServer,
    Request,
    Response,
    control_routes,
    run_until_signalled,
    standin_parser,
)

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
GSM7_SEGMENT, GSM7_MULTI, UCS2_SEGMENT, UCS2_MULTI = 160, 153, 70, 67
LATENCY_ENV = "HERALD_SMS_STANDIN_LATENCY_MS"
MESSAGES = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")
FLUSH_SECONDS = 0.2


def segments(body: str) -> int:
    """How many SMS segments a body takes (GSM-7 when ASCII, else UCS-2)."""
    single, multi = (GSM7_SEGMENT, GSM7_MULTI) if body.isascii() else (UCS2_SEGMENT, UCS2_MULTI)
    return 1 if len(body) <= single else -(-len(body) // multi)


class Provider:
    """Messages, faults and the request log; touched only from the event loop."""

    def __init__(self, store: Path | None, latency_ms: float = 0.0) -> None:
        self.store = store
        self.latency_ms = latency_ms
        self.messages: list[dict[str, Any]] = []
        self.by_account: dict[str, list[dict[str, Any]]] = {}
        self.by_key: dict[str, dict[str, Any]] = {}
        self.faults: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        self.pending: list[str] = []  # store lines not written yet

    def take_fault(self, to: str) -> dict[str, Any] | None:
        """The first fault that applies to ``to`` (used up by one when it has a count)."""
        for fault in list(self.faults):
            if not to.startswith(fault.get("to_prefix") or ""):
                continue
            if fault.get("count") is not None:
                if fault["count"] <= 0:
                    self.faults.remove(fault)
                    continue
                fault["count"] -= 1
            return dict(fault)
        return None

    def note(self, entry: dict[str, Any]) -> None:
        self.log.append({**entry, "at": time.time()})

    def send(self, account_sid: str, to: str, from_: str, body: str, key: str | None) -> Response:
        fault = self.take_fault(to)
        if fault is not None:
            self.note({"to": to, "key": key, "status": fault["status"]})
            headers = {"Retry-After": str(fault["retry_after"])} if fault.get("retry_after") else {}
            return Response(
                int(fault["status"]),
                {"code": 20500, "message": fault.get("message") or "injected failure",
                 "status": fault["status"]},
                headers,
            )  # fmt: skip
        if not E164.match(to):
            self.note({"to": to, "key": key, "status": 400})
            return Response(
                400,
                {"code": 21211, "message": f"The 'To' number {to} is not a valid phone number.",
                 "status": 400},
            )  # fmt: skip
        if key and key in self.by_key:
            self.log.append({"to": to, "key": key, "status": 200, "duplicate": True})
            return Response(201, self.by_key[key])
        message = {
            "sid": "SM" + uuid.uuid4().hex,
            "account_sid": account_sid,
            "to": to,
            "from": from_,
            "body": body,
            "status": "queued",
            "num_segments": str(segments(body)),
            "date_created": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
            "idempotency_key": key,
        }
        self.messages.append(message)
        self.by_account.setdefault(account_sid, []).append(message)
        if key:
            self.by_key[key] = message
        self.log.append({"to": to, "key": key, "status": 201, "sid": message["sid"]})
        if self.store is not None:
            self.pending.append(json.dumps(message) + "\n")
        return Response(201, message)

    def clear(self) -> None:
        self.messages.clear()
        self.by_account.clear()
        self.by_key.clear()
        self.log.clear()

    def flush(self) -> None:
        """Append the pending store lines in one write (no fsync: a stand-in, not a ledger)."""
        if self.store is None or not self.pending:
            return
        lines, self.pending = self.pending, []
        with open(self.store, "a") as fh:
            fh.write("".join(lines))


def create_server(provider: Provider) -> HttpServer:
    server = HttpServer()

    def is_messages(path: str) -> bool:
        return MESSAGES.match(path) is not None

    @server.route("POST", is_messages)
    async def create_message(request: Request) -> Response:
        match = MESSAGES.match(request.path)
        assert match is not None
        form = request.form()
        missing = [name for name in ("To", "Body") if name not in form]
        if missing:
            return Response(
                422,
                {"detail": [{"type": "missing", "loc": ["body", name], "msg": "Field required"}
                            for name in missing]},
            )  # fmt: skip
        if provider.latency_ms > 0:
            await asyncio.sleep(provider.latency_ms / 1000)
        key = request.headers.get("i-twilio-idempotency-token") or request.headers.get(
            "idempotency-key"
        )
        return provider.send(match.group(1), form["To"], form.get("From", ""), form["Body"], key)

    @server.route("GET", is_messages)
    async def list_messages(request: Request) -> Response:
        match = MESSAGES.match(request.path)
        assert match is not None
        return Response(200, {"messages": list(provider.by_account.get(match.group(1), []))})

    def at(path: str) -> Any:
        return lambda candidate: candidate == path

    @server.route("POST", at("/control/fail"))
    async def set_fault(request: Request) -> Response:
        try:
            fault = request.json()
        except ValueError:
            fault = None
        if not isinstance(fault, dict) or not isinstance(fault.get("status"), int):
            return Response(400, {"detail": "body must be JSON with an integer 'status'"})
        provider.faults.append(fault)
        return Response(200, fault)

    @server.route("DELETE", at("/control/fail"))
    async def clear_fault(request: Request) -> Response:
        to_prefix = request.arg("to_prefix")
        provider.faults = [
            fault
            for fault in provider.faults
            if to_prefix is not None and fault.get("to_prefix") != to_prefix
        ]
        return Response(200, {"status": "cleared"})

    @server.route("GET", at("/control/log"))
    async def get_log(request: Request) -> Response:
        return Response(200, list(provider.log))

    @server.route("DELETE", at("/control/messages"))
    async def clear_messages(request: Request) -> Response:
        provider.clear()
        return Response(200, {"status": "cleared"})

    control_routes(server, at("/control/latency"), at("/healthz"), provider)

    return server


async def serve(host: str, port: int, provider: Provider) -> None:
    server = await create_server(provider).start(host, port)
    try:
        await run_until_signalled(provider.flush, FLUSH_SECONDS)
    finally:
        server.close()


def main() -> None:
    parser = standin_parser("Herald's SMS provider stand-in", LATENCY_ENV, "a message post")
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, Provider(args.store, args.latency_ms)))


if __name__ == "__main__":
    main()
