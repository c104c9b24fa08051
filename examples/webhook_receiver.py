"""A Herald webhook receiver, with nothing but the standard library.

Herald signs every webhook as the Standard Webhooks specification says: ``webhook-id``,
``webhook-timestamp`` (unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of
``id.timestamp.body``, keyed by the base64 after ``whsec_`` in your endpoint's secret). Check
the signature over the raw body before parsing it, reject old timestamps (a replayed request),
and drop a ``webhook-id`` you already handled (a delivery may come more than once).

Run: ``WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py --port 8000``; it answers
204 to a valid request (and prints it), 401 to anything else.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def verify(
    secret: str, headers: Mapping[str, str], body: bytes | str, tolerance_s: int = 300
) -> bool:
    """Whether ``body`` (the raw request body) was signed by Herald with ``secret`` less than
    ``tolerance_s`` seconds ago."""
    raw = body.encode() if isinstance(body, str) else body
    h = {name.lower(): value for name, value in headers.items()}
    msg_id, stamp = h.get("webhook-id", ""), h.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > tolerance_s:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, s) for s in h.get("webhook-signature", "").split())


def make_handler(secret: str, tolerance_s: int = 300) -> type[BaseHTTPRequestHandler]:
    seen: set[str] = set()  # webhook-ids handled (keep them longer than the tolerance)

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not verify(secret, dict(self.headers.items()), body, tolerance_s):
                self.send_response(401)
                self.end_headers()
                return
            msg_id = self.headers["webhook-id"]
            if msg_id not in seen:
                seen.add(msg_id)
                event = json.loads(body)
                print(f"{event['type']}: {event['data'].get('title')!r} ({msg_id})", flush=True)
            self.send_response(204)
            self.end_headers()

    return Receiver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--secret", default=os.environ.get("WEBHOOK_SECRET", ""))
    parser.add_argument("--tolerance", type=int, default=300, help="seconds (default 300)")
    args = parser.parse_args()
    if not args.secret.startswith("whsec_"):
        parser.error("give the endpoint's secret: --secret whsec_... or WEBHOOK_SECRET")
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.secret, args.tolerance))
    print(f"listening on http://{args.host}:{args.port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
