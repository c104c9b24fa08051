"""``/ui/``: the web inbox, served by the read API itself.

- ``/ui/herald-inbox.js`` and ``/ui/herald-preferences.js``: the ``<herald-inbox>`` and
  ``<herald-preferences>`` Web Components (ES modules, no framework, no build step), cached
  five minutes (``Cache-Control: public, max-age=300``) and revalidated by ``ETag``; gzipped
  (once, at start) for clients that accept it.
- ``/ui/demo?user=<id>``: a page showing both for one user, with a session token the server
  mints for the page, and a button that publishes a test event
  (``POST /ui/demo/publish?user=<id>``). Only on a developer's machine: when the API listens on
  loopback (and ``HERALD_ENV`` is not ``production``) for a request addressed to a loopback
  name, or when ``HERALD_ENV=local``. Anywhere else both answer 404, as if they did not exist:
  they hand out any user's data without a credential.

Every ``/ui`` response carries a strict Content-Security-Policy (:data:`CSP`): scripts, styles
and connections from this origin only, nothing inline, no framing.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.resources
import random
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from string import Template
from typing import Annotated, Any, Final

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from herald.auth import AuthSettings, check_user_id, get_authenticator, is_loopback
from herald.producer import AckedProducer
from herald.serde import encode
from herald.settings import Settings
from herald.streaming import Outgoing, producer_config
from herald.webapi import Problem
from schemas import CATALOGUE

PREFIX: Final = "/ui"
#: The policy of every ``/ui`` response: nothing inline (no script, no style attribute or
#: element), nothing from elsewhere, never framed.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
)
#: How long browsers and proxies may keep the components before revalidating (ETag).
CACHE_CONTROL: Final = "public, max-age=300"
JAVASCRIPT: Final = "text/javascript; charset=utf-8"
CSS: Final = "text/css; charset=utf-8"
#: The static files served, with their content types.
ASSETS: Final = {
    "herald-inbox.js": JAVASCRIPT,
    "herald-preferences.js": JAVASCRIPT,
    "demo.js": JAVASCRIPT,
    "demo.css": CSS,
}
#: The event type the demo's button publishes, and its context.
DEMO_EVENT_TYPE: Final = "comment.created"
_DEMO_POSTS: Final = (
    "Kafka at scale",
    "Exactly-once, really?",
    "Postgres as a queue",
    "Designing for back-pressure",
)
_DEMO_AUTHORS: Final = ("Ada", "Grace", "Linus", "Barbara", "Ken")
_DEMO_EXCERPTS: Final = (
    "Partitions bound parallelism.",
    "Idempotent producers make retries safe.",
    "SKIP LOCKED does wonders here.",
    "Slow consumers should slow producers, not crash them.",
)


#: The ``?user=`` of the demo's routes.
#: (Optional here so that a request where the demo is off is 404, never 422.)
UserQuery = Annotated[str | None, Query(description="The demo user's id.")]


@dataclass(frozen=True)
class Asset:
    """A static file, loaded once: its bytes, content type and ETag."""

    body: bytes
    media_type: str
    etag: str
    #: The same, compressed once at start (``gzip -9``), with its own ETag.
    gzipped: bytes
    gzip_etag: str


def _load_assets() -> dict[str, Asset]:
    folder = importlib.resources.files("services.inapp_store.api") / "ui"
    assets = {}
    for name, media_type in ASSETS.items():
        body = (folder / name).read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:32]
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        assets[name] = Asset(body, media_type, f'"{digest}"', packed, f'"{digest}-gz"')
    return assets


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header admits gzip (and does not refuse it: ``q=0``)."""
    for part in accept_encoding.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "x-gzip"):
            q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else ""
            try:
                return q == "" or float(q) > 0
            except ValueError:
                return False
    return False


def _demo_template() -> Template:
    folder = importlib.resources.files("services.inapp_store.api") / "ui"
    return Template((folder / "demo.html").read_text("utf-8"))


class SecurityHeaders:
    """ASGI middleware: the CSP and companions on every response under ``/ui`` (errors too)."""

    HEADERS: Final = (
        (b"content-security-policy", CSP.encode("ascii")),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in self.HEADERS}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*headers, *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def demo_allowed(auth: AuthSettings, listen_host: str, request: Request) -> bool:
    """Whether this request may see the demo: ``HERALD_ENV=local``, or an API listening on
    loopback (not ``HERALD_ENV=production``) asked by a loopback name (``127.0.0.1``,
    ``localhost``, ``[::1]``; another name is a proxy or a DNS-rebinding page)."""
    if auth.env == "local":
        return True
    if auth.env == "production" or not is_loopback(listen_host):
        return False
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return bool(name) and is_loopback(name)


def _not_found() -> Problem:
    return Problem(404, "Not Found", "Not Found")


class DemoPublisher:
    """Publishes the demo's test events straight to Kafka (a producer made on first use)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = CATALOGUE.with_prefix(settings.kafka.topic_prefix).events.name
        self._producer: AckedProducer | None = None
        self._lock = threading.Lock()

    def publish(self, user_id: str) -> str:
        """A ``comment.created`` event for ``user_id``, acknowledged by Kafka; its id."""
        event_id = str(uuid.uuid4())
        post = random.choice(_DEMO_POSTS)
        event: dict[str, Any] = {
            "event_id": event_id,
            "event_type": DEMO_EVENT_TYPE,
            "occurred_at": datetime.now(UTC),
            "producer": "herald-ui-demo",
            "actor_id": None,
            "recipients": [user_id],
            "context": {
                "post_title": post,
                "author_name": random.choice(_DEMO_AUTHORS),
                "excerpt": random.choice(_DEMO_EXCERPTS),
            },
            "metadata": {},
        }
        record = Outgoing(self.topic, event_id, encode("herald.Event", event))
        with self._lock:
            if self._producer is None:
                self._producer = AckedProducer(
                    producer_config(self.settings.kafka, **{"message.timeout.ms": 10_000})
                )
            refused = self._producer.deliver([record])
        if refused:
            raise Problem(
                503,
                "Service Unavailable",
                f"Kafka did not acknowledge the test event: {refused[0].error}",
                kind="kafka-unavailable",
                headers={"Retry-After": "5"},
            )
        return event_id


def make_router(settings: Settings, listen_host: str, auth: AuthSettings) -> APIRouter:
    """The ``/ui`` routes (anonymous: the demo's guard is :func:`demo_allowed`)."""
    assets = _load_assets()
    template = _demo_template()
    publisher = DemoPublisher(settings)
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def static(name: str, request: Request) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise _not_found()
        packed = _accepts_gzip(request.headers.get("accept-encoding", ""))
        etag = asset.gzip_etag if packed else asset.etag
        headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag, "Vary": "Accept-Encoding"}
        tags = request.headers.get("if-none-match", "")
        if etag in {tag.strip().removeprefix("W/") for tag in tags.split(",")} or (
            tags.strip() == "*"
        ):
            return Response(status_code=304, headers=headers)
        if packed:
            headers["Content-Encoding"] = "gzip"
            return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    @router.api_route("/{name}.js", methods=["GET", "HEAD"])
    def script(name: str, request: Request) -> Response:
        return static(f"{name}.js", request)

    @router.api_route("/{name}.css", methods=["GET", "HEAD"])
    def stylesheet(name: str, request: Request) -> Response:
        return static(f"{name}.css", request)

    def guarded_user(request: Request, user: str | None) -> str:
        if not demo_allowed(auth, listen_host, request):
            raise _not_found()
        try:
            return check_user_id(user or "")
        except ValueError as exc:
            raise Problem(
                422, "Request is not valid", f"user: {exc}", kind="validation-error"
            ) from None

    @router.get("/demo", response_class=HTMLResponse)
    def demo(request: Request, user: UserQuery = None) -> HTMLResponse:
        user_id = guarded_user(request, user)
        # Minted as POST /v1/users/{user_id}/session does, for the longest life configured.
        token, _expires = get_authenticator(request).session_for(user_id)
        page = template.substitute(
            user=html.escape(user_id, quote=True), token=html.escape(token, quote=True)
        )
        # The page holds a credential: never stored by the browser or a proxy.
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @router.post("/demo/publish", status_code=202)
    def demo_publish(request: Request, user: UserQuery = None) -> dict[str, str]:
        user_id = guarded_user(request, user)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers['host']}":
            # Another site's page posting to a developer's local API.
            raise Problem(403, "Forbidden", "cross-origin request refused", kind="forbidden")
        return {"event_id": publisher.publish(user_id)}

    return router


def install(app: FastAPI, settings: Settings, listen_host: str, auth: AuthSettings) -> None:
    """Serve ``/ui`` from ``app``, with the security headers on every ``/ui`` response."""
    app.add_middleware(SecurityHeaders)
    app.include_router(make_router(settings, listen_host, auth))
