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

Run: ``python -m herald.devstack.sms_standin --port 18025 --store FILE``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, Header, HTTPException, Request
from fastapi.responses import JSONResponse

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
GSM7_SEGMENT, GSM7_MULTI, UCS2_SEGMENT, UCS2_MULTI = 160, 153, 70, 67


def segments(body: str) -> int:
    """How many SMS segments a body takes (GSM-7 when ASCII, else UCS-2)."""
    single, multi = (GSM7_SEGMENT, GSM7_MULTI) if body.isascii() else (UCS2_SEGMENT, UCS2_MULTI)
    return 1 if len(body) <= single else -(-len(body) // multi)


class Provider:
    def __init__(self, store: Path | None) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []
        self.by_key: dict[str, dict[str, Any]] = {}
        self.faults: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []

    def take_fault(self, to: str) -> dict[str, Any] | None:
        """The first fault that applies to ``to`` (used up by one when it has a count)."""
        with self.lock:
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


def create_app(store: Path | None = None) -> FastAPI:
    app = FastAPI(title="Herald SMS provider stand-in")
    provider = Provider(store)
    app.state.provider = provider

    def note(entry: dict[str, Any]) -> None:
        with provider.lock:
            provider.log.append({**entry, "at": time.time()})

    @app.post("/2010-04-01/Accounts/{account_sid}/Messages.json", status_code=201)
    def create_message(
        account_sid: str,
        to: Annotated[str, Form(alias="To")],
        body: Annotated[str, Form(alias="Body")],
        from_: Annotated[str, Form(alias="From")] = "",
        idempotency_token: Annotated[str | None, Header(alias="I-Twilio-Idempotency-Token")] = None,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> Any:
        key = idempotency_token or idempotency_key
        fault = provider.take_fault(to)
        if fault is not None:
            note({"to": to, "key": key, "status": fault["status"]})
            headers = {"Retry-After": str(fault["retry_after"])} if fault.get("retry_after") else {}
            return JSONResponse(
                {"code": 20500, "message": fault.get("message") or "injected failure",
                 "status": fault["status"]},
                status_code=int(fault["status"]),
                headers=headers,
            )  # fmt: skip
        if not E164.match(to):
            note({"to": to, "key": key, "status": 400})
            return JSONResponse(
                {"code": 21211, "message": f"The 'To' number {to} is not a valid phone number.",
                 "status": 400},
                status_code=400,
            )  # fmt: skip
        with provider.lock:
            if key and key in provider.by_key:
                provider.log.append({"to": to, "key": key, "status": 200, "duplicate": True})
                return provider.by_key[key]
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
            provider.messages.append(message)
            if key:
                provider.by_key[key] = message
            provider.log.append({"to": to, "key": key, "status": 201, "sid": message["sid"]})
            if provider.store is not None:
                with open(provider.store, "a") as fh:
                    fh.write(json.dumps(message) + "\n")
        return message

    @app.get("/2010-04-01/Accounts/{account_sid}/Messages.json")
    def list_messages(account_sid: str) -> dict[str, Any]:
        with provider.lock:
            return {"messages": [m for m in provider.messages if m["account_sid"] == account_sid]}

    @app.post("/control/fail")
    async def set_fault(request: Request) -> dict[str, Any]:
        fault = await request.json()
        if not isinstance(fault, dict) or not isinstance(fault.get("status"), int):
            raise HTTPException(400, "body must be JSON with an integer 'status'")
        with provider.lock:
            provider.faults.append(fault)
        return fault

    @app.delete("/control/fail")
    def clear_fault(to_prefix: str | None = None) -> dict[str, str]:
        with provider.lock:
            provider.faults = [
                fault
                for fault in provider.faults
                if to_prefix is not None and fault.get("to_prefix") != to_prefix
            ]
        return {"status": "cleared"}

    @app.get("/control/log")
    def get_log() -> list[dict[str, Any]]:
        with provider.lock:
            return list(provider.log)

    @app.delete("/control/messages")
    def clear_messages() -> dict[str, str]:
        with provider.lock:
            provider.messages.clear()
            provider.by_key.clear()
            provider.log.clear()
        return {"status": "cleared"}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Herald's SMS provider stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args()
    uvicorn.run(create_app(args.store), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
