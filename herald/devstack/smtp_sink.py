"""An SMTP server for the local stack: accepts every message and stores it for inspection.

SMTP (aiosmtpd) on ``--port``; a small HTTP API on ``--api-port``:

- ``GET /messages`` every stored message (envelope, headers, raw text); ``DELETE /messages``
- ``POST /faults`` ``{"code": 451, "message": "try later", "count": 2, "rcpt": "bob@"}``
  answers the next ``count`` matching RCPT commands with that reply (``count`` null = always);
  ``DELETE /faults`` clears them. Tests use it to play a flaky or rejecting mail server.
- ``GET /log`` every RCPT seen with the reply given.

Run: ``python -m herald.devstack.smtp_sink --port 12525 --api-port 12526 --store DIR``.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class Sink:
    """Stored messages, injected faults and the RCPT log, shared by SMTP and HTTP threads."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.store.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []

    def fault_for(self, rcpt: str) -> str | None:
        with self.lock:
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
        with self.lock:
            self.log.append({"rcpt": rcpt, "reply": reply, "at": time.time()})

    def save(self, envelope: Envelope) -> None:
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        entry = {
            "id": uuid.uuid4().hex,
            "received_at": time.time(),
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(parsed.get("Subject", "")),
            "message_id": str(parsed.get("Message-ID", "")),
            "raw": raw.decode("utf-8", "replace"),
        }
        name = f"{time.time_ns()}-{entry['id']}.json"
        tmp = self.store / f".{name}"
        tmp.write_text(json.dumps(entry))
        tmp.rename(self.store / name)  # readers never see half a message

    def messages(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.store.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def clear(self) -> None:
        for path in self.store.glob("*.json"):
            path.unlink(missing_ok=True)
        with self.lock:
            self.log.clear()


class Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

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
        self.sink.save(envelope)
        return "250 Message accepted for delivery"


def _api(sink: Sink) -> type[BaseHTTPRequestHandler]:
    class Api(BaseHTTPRequestHandler):
        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.startswith("/messages"):
                self._send(200, sink.messages())
            elif self.path.startswith("/log"):
                with sink.lock:
                    self._send(200, list(sink.log))
            elif self.path.startswith("/healthz"):
                self._send(200, {"status": "ok"})
            else:
                self._send(404, {"detail": f"no route {self.path}"})

        def do_POST(self) -> None:
            if not self.path.startswith("/faults"):
                self._send(404, {"detail": f"no route {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                fault = json.loads(self.rfile.read(length) or b"{}")
                int(fault["code"])
            except (ValueError, KeyError, TypeError):
                self._send(400, {"detail": "body must be JSON with an integer 'code'"})
                return
            with sink.lock:
                sink.faults.append(fault)
            self._send(201, fault)

        def do_DELETE(self) -> None:
            if self.path.startswith("/messages"):
                sink.clear()
            elif self.path.startswith("/faults"):
                with sink.lock:
                    sink.faults.clear()
            else:
                self._send(404, {"detail": f"no route {self.path}"})
                return
            self._send(200, {"status": "cleared"})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True)
    args = parser.parse_args()

    sink = Sink(args.store)
    controller = Controller(Handler(sink), hostname=args.host, port=args.port)
    controller.start()
    http = ThreadingHTTPServer((args.host, args.api_port), _api(sink))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(f"smtp sink on {args.host}:{args.port}, API on {args.host}:{args.api_port}", flush=True)
    stop.wait()
    http.shutdown()
    controller.stop()


if __name__ == "__main__":
    main()
