"""``python -m services.ingest``: serve the ingest/admin API with uvicorn.

Listens on ``INGEST_HOST`` (default 127.0.0.1) and ``HERALD_INGEST_PORT`` (default 18000).
SIGTERM/SIGINT stop accepting connections, finish the requests in flight, deliver what the
producer still holds, then exit.
"""

from __future__ import annotations

import uvicorn

from herald import logs
from herald.auth import AuthSettings, InsecureDefaults, check_exposure
from herald.metrics import serve_metrics
from herald.settings import get_settings
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings


def main() -> None:
    """Run the API in the foreground until SIGTERM/SIGINT."""
    ingest = IngestSettings()
    logs.configure(ingest.log_level)
    settings = get_settings()
    auth = AuthSettings()
    try:
        check_exposure(auth, ingest.host, "the ingest API")
    except InsecureDefaults as exc:
        raise SystemExit(str(exc)) from None
    serve_metrics(ingest.metrics_port)
    uvicorn.run(
        create_app(settings, ingest, auth=auth),
        host=ingest.host,
        port=settings.local.ingest_port,
        # None: keep the JSON logging configured above instead of uvicorn's own.
        log_config=None,
        access_log=ingest.access_log,
        # Past it uvicorn answers 503 instead of holding yet another connection.
        limit_concurrency=ingest.limit_concurrency,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
