"""``python -m services.inapp_store.api``: serve the read API with uvicorn.

Listens on ``READ_API_HOST`` (default 127.0.0.1) and ``HERALD_READ_API_PORT`` (default 18001).
SIGTERM/SIGINT stop accepting connections, end the open real-time streams (clients reconnect
elsewhere), finish the requests in flight, then exit.
"""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from herald import logs
from herald.auth import AuthSettings, InsecureDefaults, check_exposure, redact_access_log
from herald.metrics import serve_metrics
from herald.settings import get_settings
from services.inapp_store.api.app import create_app
from services.inapp_store.api.broker import InboxBroker
from services.inapp_store.api.settings import ReadApiSettings


class _Server(uvicorn.Server):
    """uvicorn, ending the streams first on SIGTERM: they never finish on their own, so the
    server would otherwise wait its whole graceful-shutdown timeout for them."""

    def __init__(self, config: uvicorn.Config, broker: InboxBroker) -> None:
        super().__init__(config)
        self.broker = broker
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.loop is not None:
            # A signal handler: hand the work to the loop instead of touching its queues here.
            self.loop.call_soon_threadsafe(self.broker.close_streams)
        super().handle_exit(sig, frame)


def main() -> None:
    """Run the API in the foreground until SIGTERM/SIGINT."""
    config = ReadApiSettings()
    logs.configure(config.log_level)
    redact_access_log()
    settings = get_settings()
    auth = AuthSettings()
    try:
        check_exposure(auth, config.host, "the read API")
    except InsecureDefaults as exc:
        raise SystemExit(str(exc)) from None
    serve_metrics(config.metrics_port)
    app: FastAPI = create_app(settings, config, auth)
    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=settings.local.read_api_port,
            # None: keep the JSON logging configured above instead of uvicorn's own.
            log_config=None,
            access_log=config.access_log,
            # Past it uvicorn answers 503 instead of holding yet another connection.
            limit_concurrency=config.limit_concurrency,
            timeout_graceful_shutdown=10,
        ),
        app.state.broker,
    )
    server.run()


if __name__ == "__main__":
    main()
