"""The read API's ``/ui``: the web components and the demo page, served with the right content
types, cache headers and a strict Content-Security-Policy on every response; the demo only on
a developer's machine; its button's endpoint putting a real event on Kafka.

What the components do in a browser is tested in ``tests/browser`` (Playwright, Chromium).
The static-serving tests run in-process without the app's lifespan (no database needed); the
session-token and Kafka tests run it against this test's schema and topics.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx import Headers
from pydantic import SecretStr

from herald.auth import AuthSettings, verify_session_token
from herald.cli import run
from herald.serde import decode
from herald.settings import DatabaseSettings, KafkaSettings, Settings
from schemas import Catalogue
from services.inapp_store.api import ui
from services.inapp_store.api.app import create_app
from services.inapp_store.api.settings import ReadApiSettings
from tests.integration.kafka_util import read_all
from tests.integration.pipeline import Pipeline

pytestmark = pytest.mark.integration

SECRET = "ui-test-user-token-secret-0123456789"
ADMIN = "ui-test-admin-key-0123456789"
UI_DIR = Path(ui.__file__).parent / "ui"
ROOT = Path(__file__).resolve().parents[2]
LOCAL = "http://127.0.0.1:18001"
COMPONENTS = ("herald-inbox.js", "herald-preferences.js")


def auth(env: str | None = None) -> AuthSettings:
    return AuthSettings(
        admin_api_keys=SecretStr(ADMIN),
        user_token_secret=SecretStr(SECRET),
        env=env,  # type: ignore[arg-type]
        auth_failures_per_min=0,
    )


def client(
    settings: Settings | None = None,
    *,
    host: str = "127.0.0.1",
    env: str | None = None,
    base_url: str = LOCAL,
) -> TestClient:
    """A client of the read API listening on ``host`` (requests sent to ``base_url``)."""
    app = create_app(
        settings or Settings(),
        ReadApiSettings(host=host, rate_limit_per_s=0),
        auth(env),
    )
    return TestClient(app, base_url=base_url)


@pytest.fixture(scope="module")
def static() -> TestClient:
    """No lifespan: serving files needs no database."""
    return client()


def csp_directives(value: str) -> dict[str, list[str]]:
    directives = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


def assert_strict_csp(headers: Headers) -> None:
    value = headers.get("content-security-policy")
    assert value, "no Content-Security-Policy"
    policy = csp_directives(value)
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'", "data:"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    sources = {word.strip("'") for words in policy.values() for word in words}
    assert not sources & {"unsafe-inline", "unsafe-eval", "unsafe-hashes", "*", "http:", "https:"}
    assert headers.get("x-content-type-options") == "nosniff"


# --- static files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*COMPONENTS, "demo.js"])
def test_scripts_are_javascript_cached_with_an_etag(static: TestClient, name: str) -> None:
    response = static.get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=300"
    etag = response.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}(-gz)?"', etag)
    assert response.content == (UI_DIR / name).read_bytes()
    assert_strict_csp(response.headers)


def test_scripts_are_gzipped_for_clients_that_accept_it(static: TestClient) -> None:
    plain = UI_DIR.joinpath("herald-inbox.js").read_bytes()
    identity = static.get("/ui/herald-inbox.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in identity.headers
    assert identity.headers["vary"] == "Accept-Encoding"
    assert int(identity.headers["content-length"]) == len(plain)
    packed = static.get("/ui/herald-inbox.js", headers={"Accept-Encoding": "br, gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.content == plain  # decoded by the client
    assert int(packed.headers["content-length"]) < len(plain) // 2
    assert packed.headers["etag"] != identity.headers["etag"]
    refused = static.get("/ui/herald-inbox.js", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


def test_head_answers_the_headers_only(static: TestClient) -> None:
    get = static.get("/ui/herald-inbox.js", headers={"Accept-Encoding": "identity"})
    head = static.head("/ui/herald-inbox.js", headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length", "etag", "cache-control"):
        assert head.headers[name] == get.headers[name], name
    assert_strict_csp(head.headers)


def test_stylesheet_is_css(static: TestClient) -> None:
    response = static.get("/ui/demo.css")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/css; charset=utf-8"
    assert response.headers["cache-control"] == "public, max-age=300"
    assert_strict_csp(response.headers)


def test_a_matching_etag_is_not_modified(static: TestClient) -> None:
    first = static.get("/ui/herald-inbox.js")
    etag = first.headers["etag"]
    for given in (etag, f"W/{etag}", f'"other", {etag}'):
        again = static.get("/ui/herald-inbox.js", headers={"If-None-Match": given})
        assert again.status_code == 304, given
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == "public, max-age=300"
        assert_strict_csp(again.headers)
    stale = static.get("/ui/herald-inbox.js", headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.content == first.content
    # Each file has its own tag.
    assert static.get("/ui/herald-preferences.js").headers["etag"] != etag


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ui/herald-inbox.js"),
        ("GET", "/ui/herald-preferences.js"),
        ("GET", "/ui/demo.css"),
        ("GET", "/ui/demo?user=ada"),
        ("GET", "/ui/demo"),  # 422: no user
        ("GET", "/ui/demo?user=a%20b"),  # 422: not a user id
        ("GET", "/ui/unknown.js"),  # 404
        ("GET", "/ui/demo.html"),  # 404: the template is not served as it is
        ("GET", "/ui/"),  # 404
        ("GET", "/ui"),  # 404
        ("POST", "/ui/herald-inbox.js"),  # 405
        ("POST", "/ui/demo/publish"),  # 422: no user
    ],
)
def test_every_ui_response_carries_the_strict_policy(
    static: TestClient, method: str, path: str
) -> None:
    response = static.request(method, path)
    assert_strict_csp(response.headers)
    assert response.headers["referrer-policy"] == "no-referrer"


def test_the_policy_stays_on_ui(static: TestClient) -> None:
    response = static.get("/healthz")
    assert response.status_code == 200
    assert "content-security-policy" not in response.headers


def test_nothing_inline_in_the_files() -> None:
    """The CSP allows no inline script or style: the files must need none."""
    page = (UI_DIR / "demo.html").read_text("utf-8")
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.S | re.I)
    assert scripts and all(body.strip() == "" for body in scripts)
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", page, re.I))
    assert not re.search(r"<style\b", page, re.I)
    assert not re.search(r"\sstyle\s*=", page, re.I)
    assert not re.search(r"\son[a-z]+\s*=", page, re.I)
    assert not re.search(r"javascript:", page, re.I)
    for name in (*COMPONENTS, "demo.js"):
        code = (UI_DIR / name).read_text("utf-8")
        for unsafe in (
            r"\binnerHTML\b",
            r"\bouterHTML\b",
            r"insertAdjacentHTML",
            r"document\.write",
            r"\beval\(",
            r"new Function\(",
            r"setAttribute\(\s*[\"']style",
            r"<style",
        ):
            assert not re.search(unsafe, code), f"{name}: {unsafe}"


def test_package_data_ships_every_ui_file() -> None:
    """A non-editable install (and so the Docker image) carries the files the API serves."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["services.inapp_store.api"]
    files = sorted(p.relative_to(UI_DIR.parent).as_posix() for p in UI_DIR.iterdir())
    assert {"ui/herald-inbox.js", "ui/herald-preferences.js", "ui/demo.html"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
    for name in ui.ASSETS:
        assert (UI_DIR / name).is_file()


# --- the demo's guard -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "env", "base_url", "allowed"),
    [
        ("127.0.0.1", None, "http://127.0.0.1:18001", True),
        ("127.0.0.1", None, "http://localhost:18001", True),
        ("::1", None, "http://[::1]:18001", True),
        ("0.0.0.0", "local", "http://herald.internal:18001", True),
        ("0.0.0.0", None, "http://127.0.0.1:18001", False),
        ("10.1.2.3", None, "http://10.1.2.3:18001", False),
        # Loopback behind a proxy, or a DNS-rebinding page: another name in Host.
        ("127.0.0.1", None, "http://herald.example.com", False),
        ("127.0.0.1", "production", "http://127.0.0.1:18001", False),
        ("0.0.0.0", "production", "http://127.0.0.1:18001", False),
    ],
)
def test_the_demo_is_only_on_a_developers_machine(
    listen: str, env: str | None, base_url: str, allowed: bool
) -> None:
    api = client(host=listen, env=env, base_url=base_url)
    page = api.get("/ui/demo?user=ada")
    # Publishing is refused before Kafka is touched: an unknown user id shape is 422 when
    # allowed, 404 when not (the guard comes first).
    publish = api.post("/ui/demo/publish?user=a%20b")
    bare = api.get("/ui/demo")
    if allowed:
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert publish.status_code == 422
        assert bare.status_code == 422
    else:
        assert page.status_code == 404
        assert publish.status_code == 404
        assert bare.status_code == 404
        assert "demo" not in page.json()["detail"]
    for response in (page, publish, bare):
        assert_strict_csp(response.headers)
    # The components are served everywhere.
    assert api.get("/ui/herald-inbox.js").status_code == 200


def test_the_demo_page_escapes_the_user_and_holds_a_session_token(static: TestClient) -> None:
    response = static.get("/ui/demo", params={"user": '"><x>&'})
    assert response.status_code == 200
    page = response.text
    assert '"><x>' not in page
    assert 'content="&quot;&gt;&lt;x&gt;&amp;"' in page
    tokens = re.findall(r'<meta name="herald-token" content="([^"]+)">', page)
    assert len(tokens) == 1 and tokens[0].startswith("hs1.")
    assert 'data-testid="demo-publish"' in page
    assert "<herald-inbox" in page and "<herald-preferences" in page


def test_the_demo_pages_session_lasts_the_configured_ttl(static: TestClient) -> None:
    page = static.get("/ui/demo?user=ada").text
    token = re.findall(r'<meta name="herald-token" content="([^"]+)">', page)[0]
    claims = verify_session_token(token, [SECRET])  # the default: the user-token secret
    assert claims.user_id == "ada"
    assert claims.expires_at - claims.issued_at == auth().session_ttl_s


def test_publish_refuses_another_sites_page(static: TestClient) -> None:
    response = static.post("/ui/demo/publish?user=ada", headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert_strict_csp(response.headers)


# --- with the database and Kafka ------------------------------------------------------------


@pytest.fixture
def live(
    local_stack: Settings,
    db_settings: DatabaseSettings,
    kafka_settings: KafkaSettings,
    topics: Catalogue,
) -> Iterator[TestClient]:
    settings = local_stack.model_copy(update={"database": db_settings, "kafka": kafka_settings})
    with client(settings) as api:
        yield api


def test_the_demo_pages_token_opens_that_users_inbox_only(live: TestClient) -> None:
    page = live.get("/ui/demo?user=ada-ui").text
    token = re.findall(r'<meta name="herald-token" content="([^"]+)">', page)[0]
    headers = {"X-User-Token": token}
    inbox = live.get("/v1/users/ada-ui/notifications", headers=headers)
    assert inbox.status_code == 200, inbox.text
    assert inbox.json() == {"items": [], "next_cursor": None}
    count = live.get("/v1/users/ada-ui/notifications/unread-count", headers=headers)
    assert count.json() == {"user_id": "ada-ui", "unread": 0}
    other = live.get("/v1/users/bob-ui/notifications", headers=headers)
    assert other.status_code == 403


def test_publish_puts_a_comment_event_on_kafka(
    live: TestClient, kafka_settings: KafkaSettings, topics: Catalogue
) -> None:
    user = f"ada-{uuid.uuid4().hex[:8]}"
    response = live.post(f"/ui/demo/publish?user={user}")
    assert response.status_code == 202, response.text
    event_id = response.json()["event_id"]
    assert uuid.UUID(event_id)
    assert_strict_csp(response.headers)
    records = read_all(kafka_settings, topics.events.name)
    assert len(records) == 1
    record = records[0]
    assert record.key() == event_id.encode()
    event = decode(record.value() or b"")
    assert event["event_id"] == event_id
    assert event["event_type"] == "comment.created"
    assert event["recipients"] == [user]
    assert set(event["context"]) == {"post_title", "author_name", "excerpt"}
    assert all(event["context"].values())
    # A second press is a second event.
    again = live.post(f"/ui/demo/publish?user={user}")
    assert again.status_code == 202 and again.json()["event_id"] != event_id
    assert len(read_all(kafka_settings, topics.events.name)) == 2


# --- make run's demo page, on the whole pipeline ---------------------------------------------


def test_make_run_prints_the_demo_page_of_a_demo_user() -> None:
    settings = Settings()
    assert run.demo_page_url(settings) == (
        f"http://127.0.0.1:{settings.local.read_api_port}/ui/demo?user={run.DEMO_PAGE_USER}"
    )
    assert run.demo_page_url(settings, "a/b c").endswith("/ui/demo?user=a%2Fb%20c")


def test_the_demo_page_works_on_the_pipeline(pipeline: Pipeline) -> None:
    """What ``make run`` prepares (event types, the demo user) and prints: the page opens, its
    token reads the user's preferences, and the button's event reaches the user's inbox."""
    url = run.prepare_demo_page(pipeline.settings)
    assert url == run.demo_page_url(pipeline.settings)
    assert pipeline.read_api is not None
    read_api = str(pipeline.read_api.base_url).rstrip("/")
    assert url.startswith(f"{read_api}/ui/demo?user=")
    user = run.DEMO_PAGE_USER
    page = httpx.get(url, timeout=15)
    assert page.status_code == 200
    assert_strict_csp(page.headers)
    token = re.findall(r'<meta name="herald-token" content="([^"]+)">', page.text)[0]
    headers = {"X-User-Token": token}
    prefs = httpx.get(f"{read_api}/v1/users/{user}/preferences", headers=headers, timeout=15)
    assert prefs.status_code == 200, prefs.text
    assert "comment.created" in {t["code"] for t in prefs.json()["event_types"]}
    published = httpx.post(f"{read_api}/ui/demo/publish?user={user}", timeout=15)
    assert published.status_code == 202, published.text
    event_id = published.json()["event_id"]

    def arrived() -> list[dict[str, Any]]:
        inbox = httpx.get(
            f"{read_api}/v1/users/{user}/notifications", headers=headers, timeout=15
        ).json()
        return [n for n in inbox["items"] if n["event_id"] == event_id]

    items = pipeline.poll(arrived, timeout=60)
    assert items and items[0]["event_type"] == "comment.created"
    assert not items[0]["is_read"]
