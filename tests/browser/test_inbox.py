"""``<herald-inbox>`` and ``<herald-preferences>`` in a real browser, through the real stack.

Headless Chromium opens the read API's demo page (``/ui/demo?user=...``); events are published
to Kafka with a plain producer and travel through the router and the in-app store to the
component over the SSE stream. One ``pipeline`` serves each test: the test walks through the
states one after the other (:class:`~tests.browser.browser_util.Steps`), asserting each with
Playwright's auto-waiting ``expect`` and keeping a screenshot of it under
``.local/artifacts/browser/``; axe-core checks the page for serious or critical accessibility
violations in the main states.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from herald import seed
from herald.identity import notification_id
from tests.browser.browser_util import Steps, axe_violations, publish_many
from tests.integration.pipeline import Pipeline

pytestmark = pytest.mark.integration

#: The issue's budget from the publish call to the item and the badge on screen.
ARRIVAL_BUDGET_MS = 2000
#: Auto-waiting for anything else (clicks, the database, the router's email decision).
WAIT_MS = 15_000
#: More than 50 items: three pages at the default page size of 20.
MANY = 55


def expect(actual: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(actual)


def base_url(pipeline: Pipeline) -> str:
    assert pipeline.read_api is not None
    return str(pipeline.read_api.base_url).rstrip("/")


def open_demo(page: Any, pipeline: Pipeline, user: str) -> Any:
    """The demo page for ``user``, once its inbox's event stream is connected (a stream's
    response starts only after the server subscribed it); the ``<herald-inbox>`` locator."""
    with page.expect_response(
        lambda response: f"/v1/users/{user}/stream" in response.url, timeout=WAIT_MS
    ) as stream:
        response = page.goto(f"{base_url(pipeline)}/ui/demo?user={user}")
    assert response is not None and response.status == 200, response and response.status
    assert stream.value.status == 200, f"stream answered {stream.value.status}"
    inbox = page.locator("herald-inbox").first
    expect(inbox.get_by_test_id("herald-bell")).to_be_visible()
    return inbox


def open_list(inbox: Any) -> None:
    """Open the dropdown (once): items, empty and error states live in it."""
    bell = inbox.get_by_test_id("herald-bell")
    if bell.get_attribute("aria-expanded") != "true":
        bell.click()
    expect(bell).to_have_attribute("aria-expanded", "true")


def session_token(page: Any) -> str:
    """The session token the server minted for the demo page."""
    token = page.locator('meta[name="herald-token"]').get_attribute("content")
    assert token and token.startswith("hs1."), f"demo page token: {token!r}"
    return str(token)


def add_inbox(page: Any, element_id: str, user: str, token: str) -> Any:
    """A second ``<herald-inbox>`` on the page, for ``user`` with ``token`` (as an app embedding
    the component would write it); its locator."""
    page.evaluate(
        """([id, user, token]) => {
            const first = document.querySelector("herald-inbox");
            const el = document.createElement("herald-inbox");
            el.id = id;
            el.setAttribute("api-url", first.getAttribute("api-url") || location.origin);
            el.setAttribute("user", user);
            el.setAttribute("token", token);
            document.body.prepend(el);
        }""",
        [element_id, user, token],
    )
    return page.locator(f"#{element_id}")


def browser_fetch(page: Any, path: str, token: str) -> dict[str, Any]:
    """``GET path`` from inside the page with ``X-User-Token``: status and body."""
    result: dict[str, Any] = page.evaluate(
        """async ([path, token]) => {
            const controller = new AbortController();
            const response = await fetch(path, {
                headers: {"X-User-Token": token}, signal: controller.signal,
            });
            const type = response.headers.get("content-type") || "";
            const body = type.includes("json") ? await response.json() : null;
            controller.abort();
            return {status: response.status, body};
        }""",
        [path, token],
    )
    return result


def item_ids(inbox: Any) -> list[str]:
    return [
        str(i)
        for i in inbox.get_by_test_id("herald-item").evaluate_all(
            "items => items.map(item => item.getAttribute('data-id'))"
        )
    ]


def inbox_rows(pipeline: Pipeline, user: str) -> list[str]:
    """The user's inbox in PostgreSQL, newest first, as the read API orders it."""
    rows = pipeline.sql(
        "select id::text from notification where user_id = %s and archived_at is null"
        " order by created_at desc, id desc",
        user,
    )
    return [row[0] for row in rows]


def publish_comment(pipeline: Pipeline, user: str, title: str) -> tuple[str, float]:
    """A ``comment.created`` event for ``user`` with a plain producer; its id and the moment
    the publish call started (time.monotonic)."""
    started = time.monotonic()
    event_id = pipeline.publish(
        seed.COMMENT_CREATED,
        [user],
        post_title=title,
        author_name="Sam",
        excerpt=f"a comment on {title}",
    )
    return event_id, started


def remaining_ms(started: float) -> float:
    """What is left of the arrival budget since ``started`` (at least 1: 0 means no timeout)."""
    return max(1.0, ARRIVAL_BUDGET_MS - (time.monotonic() - started) * 1000)


def test_inbox_live_in_a_browser(pipeline: Pipeline, page: Any) -> None:
    """Open the demo page, watch events arrive live within 2 s, click one, mark all read,
    archive, turn email off in the preference center (the next event is not emailed but still
    arrives), refuse another user's inbox and an expired session, and page through more than
    50 items with no repeats and no gaps."""
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=WAIT_MS)
    pipeline.seed()
    run = pipeline.run
    ada, bob, lou = pipeline.user("ada"), pipeline.user("bob"), pipeline.user("lou")
    address = pipeline.user_contact(ada)["email"]
    steps = Steps(page, "inbox")
    inbox: Any = page.locator("herald-inbox").first
    items = inbox.get_by_test_id("herald-item")
    badge = inbox.get_by_test_id("herald-badge")
    bell = inbox.get_by_test_id("herald-bell")
    events: dict[str, str] = {}

    with steps.step("ui-served", screenshot=False):
        url = base_url(pipeline)
        for script in ("herald-inbox.js", "herald-preferences.js"):
            response = httpx.get(f"{url}/ui/{script}", timeout=15)
            assert response.status_code == 200, (script, response.status_code)
            assert response.headers["content-type"].startswith("text/javascript"), script
            assert response.headers.get("cache-control") == "public, max-age=300", script
            assert response.headers.get("etag"), f"{script}: no ETag"
            assert "default-src 'none'" in response.headers.get("content-security-policy", "")
        demo = httpx.get(f"{url}/ui/demo", params={"user": ada}, timeout=15)
        csp = demo.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp

    with steps.step("empty"):
        inbox = open_demo(page, pipeline, ada)
        items, badge = inbox.get_by_test_id("herald-item"), inbox.get_by_test_id("herald-badge")
        bell = inbox.get_by_test_id("herald-bell")
        expect(badge).to_be_hidden()
        open_list(inbox)
        expect(inbox.get_by_test_id("herald-empty")).to_be_visible()
        expect(items).to_have_count(0)
        page.evaluate(
            """() => {
                window.heraldEvents = [];
                for (const type of ["herald:click", "herald:read", "herald:error"]) {
                    document.addEventListener(type, e => window.heraldEvents.push(
                        {type: e.type, id: e.detail && e.detail.id}));
                }
            }"""
        )

    with steps.step("axe-empty", screenshot=False):
        blocking = axe_violations(page, "empty")
        assert not blocking, blocking

    with steps.step("live-arrival"):
        events["first"], started = publish_comment(pipeline, ada, f"Post 1 {run}")
        steps.timings["publish-call-ms"] = round((time.monotonic() - started) * 1000)
        expect(items).to_have_count(1, timeout=remaining_ms(started))
        expect(badge).to_have_text("1", timeout=remaining_ms(started))
        steps.timings["arrival-ms"] = round((time.monotonic() - started) * 1000)
        expect(items.first).to_have_attribute("data-id", str(notification_id(events["first"], ada)))
        expect(items.first).to_have_attribute("data-read", "false")
        expect(items.first).to_contain_text(f"Post 1 {run}")
        expect(items.first.locator("time")).to_have_text(re.compile(r"now|ago|second", re.I))
        expect(bell).to_have_attribute("aria-label", re.compile(r"\b1\b"))
        # Two more, newest first, still live (no reload: the page is the same document).
        events["second"], started = publish_comment(pipeline, ada, f"Post 2 {run}")
        expect(items).to_have_count(2, timeout=remaining_ms(started))
        expect(badge).to_have_text("2", timeout=remaining_ms(started))
        steps.timings["arrival-2-ms"] = round((time.monotonic() - started) * 1000)
        events["third"], started = publish_comment(pipeline, ada, f"Post 3 {run}")
        expect(items).to_have_count(3, timeout=remaining_ms(started))
        expect(badge).to_have_text("3", timeout=remaining_ms(started))
        steps.timings["arrival-3-ms"] = round((time.monotonic() - started) * 1000)
        expect(items.first).to_contain_text(f"Post 3 {run}")
        expect(items.last).to_contain_text(f"Post 1 {run}")
        assert page.evaluate("() => performance.getEntriesByType('navigation').length") == 1

    with steps.step("click-read"):
        newest = str(notification_id(events["third"], ada))
        item = inbox.locator(f'[data-testid="herald-item"][data-id="{newest}"]')
        item.get_by_role("button").first.click()  # the item itself, not its actions
        expect(item).to_have_attribute("data-read", "true")
        expect(badge).to_have_text("2")
        assert pipeline.poll(
            lambda: (
                pipeline.sql("select is_read from notification where id = %s", newest) == [(True,)]
            ),
            timeout=WAIT_MS / 1000,
        ), "not read in PostgreSQL"
        fired = page.evaluate("() => window.heraldEvents")
        assert {"type": "herald:click", "id": newest} in fired, fired

    with steps.step("axe-list", screenshot=False):
        blocking = axe_violations(page, "list")
        assert not blocking, blocking

    with steps.step("mark-all-read"):
        inbox.get_by_test_id("herald-mark-all-read").click()
        expect(badge).to_be_hidden()
        expect(inbox.locator('[data-testid="herald-item"][data-read="false"]')).to_have_count(0)
        expect(items).to_have_count(3)
        assert pipeline.poll(
            lambda: (
                pipeline.sql(
                    "select count(*) from notification where user_id = %s and not is_read", ada
                )
                == [(0,)]
            ),
            timeout=WAIT_MS / 1000,
        ), "unread rows left in PostgreSQL"

    with steps.step("archive"):
        oldest = str(notification_id(events["first"], ada))
        item = inbox.locator(f'[data-testid="herald-item"][data-id="{oldest}"]')
        item.get_by_test_id("herald-archive").click()
        expect(item).to_have_count(0)
        expect(items).to_have_count(2)
        assert pipeline.poll(
            lambda: (
                pipeline.sql(
                    "select archived_at is not null from notification where id = %s", oldest
                )
                == [(True,)]
            ),
            timeout=WAIT_MS / 1000,
        ), "not archived in PostgreSQL"

    with steps.step("keyboard"):
        bell.focus()
        page.keyboard.press("Enter")
        expect(bell).to_have_attribute("aria-expanded", "false")
        page.keyboard.press("Enter")
        expect(bell).to_have_attribute("aria-expanded", "true")
        expect(items).to_have_count(2)

    with steps.step("demo-button"):
        page.get_by_test_id("demo-publish").click()
        expect(items).to_have_count(3)
        expect(badge).to_have_text("1")

    with steps.step("preferences-email-off"):
        prefs = page.locator("herald-preferences").first
        email = prefs.get_by_test_id(f"herald-pref-{seed.COMMENT_CREATED}-email")
        expect(email).to_be_checked()
        expect(email).to_be_enabled()
        locked = prefs.get_by_test_id(f"herald-pref-{seed.LOGIN_ALERT}-email")
        expect(locked).to_be_disabled()  # mandatory: shown, locked
        email.uncheck()
        prefs.get_by_test_id("herald-pref-save").click()
        expect(prefs.get_by_test_id("herald-pref-saved")).to_be_visible()

    with steps.step("axe-preferences", screenshot=False):
        blocking = axe_violations(page, "preferences")
        assert not blocking, blocking

    with steps.step("preferences-next-event"):
        # The earlier comments were emailed: the switch, not the sender, keeps this one out.
        assert pipeline.poll(
            lambda: any(f"Post 1 {run}" in m["subject"] for m in pipeline.emails_to(address)),
            timeout=WAIT_MS / 1000,
        ), "the first comment was not emailed"
        events["quiet"], _ = publish_comment(pipeline, ada, f"Post 4 {run}")
        quiet_id = str(notification_id(events["quiet"], ada))
        expect(inbox.locator(f'[data-testid="herald-item"][data-id="{quiet_id}"]')).to_have_count(1)
        expect(items.first).to_contain_text(f"Post 4 {run}")
        # comment.created has five channels: wait for all five to be final (webhook and Slack
        # are skipped at once, no endpoint; counting three returned before the SMS was sent).
        states = pipeline.await_deliveries(events["quiet"], [ada], 5)
        assert states.get((ada, "inapp")) == "delivered", states
        assert states.get((ada, "email")) == "skipped", states
        assert states.get((ada, "sms")) == "sent", states
        mails = [m["subject"] for m in pipeline.emails_to(address)]
        assert not any(f"Post 4 {run}" in subject for subject in mails), mails

    with steps.step("other-user-refused"):
        token = session_token(page)
        own = browser_fetch(page, f"/v1/users/{ada}/notifications", token)
        assert own["status"] == 200, own
        other = browser_fetch(page, f"/v1/users/{bob}/notifications", token)
        assert other["status"] == 403, other
        stream = browser_fetch(page, f"/v1/users/{bob}/stream?token={token}", "")
        assert stream["status"] == 403, stream
        foreign = add_inbox(page, "foreign-inbox", bob, token)
        open_list(foreign)
        expect(foreign.get_by_test_id("herald-error")).to_be_visible()
        expect(foreign.get_by_test_id("herald-item")).to_have_count(0)

    with steps.step("expired-session"):
        assert pipeline.read_api is not None
        minted = pipeline.read_api.post(f"/v1/users/{ada}/session", json={"ttl_s": 1})
        assert minted.status_code == 201, minted.text
        expired = minted.json()["token"]
        time.sleep(2.0)  # the only sleep: let the one-second session expire
        refused = browser_fetch(page, f"/v1/users/{ada}/notifications", expired)
        assert refused["status"] == 401, refused
        assert refused["body"]["type"] == "urn:herald:problem:session-expired", refused
        stale = add_inbox(page, "expired-inbox", ada, expired)
        open_list(stale)
        expect(stale.get_by_test_id("herald-error")).to_contain_text(re.compile("expired", re.I))
        expect(stale.get_by_test_id("herald-item")).to_have_count(0)
        fired = page.evaluate("() => window.heraldEvents")
        assert any(event["type"] == "herald:error" for event in fired), fired

    with steps.step("no-csp-violations", screenshot=False):
        refused_by_csp = [line for line in page.herald_console if "Content Security Policy" in line]
        assert not refused_by_csp, refused_by_csp

    with steps.step("load-more"):
        publish_many(
            pipeline,
            seed.COMMENT_CREATED,
            lou,
            MANY,
            post_title=f"Many {{n}} {run}",
            author_name="Sam",
            excerpt="one of many",
        )
        assert pipeline.poll(lambda: len(inbox_rows(pipeline, lou)) == MANY, timeout=60), (
            f"{len(inbox_rows(pipeline, lou))} of {MANY} stored"
        )
        expected = inbox_rows(pipeline, lou)
        inbox = open_demo(page, pipeline, lou)
        items = inbox.get_by_test_id("herald-item")
        open_list(inbox)
        expect(inbox.get_by_test_id("herald-badge")).to_have_text(str(MANY))
        size = int(inbox.get_attribute("page-size") or 20)
        shown = min(size, MANY)
        expect(items).to_have_count(shown)
        more = inbox.get_by_test_id("herald-load-more")
        while shown < MANY:
            more.click()
            shown = min(shown + size, MANY)
            expect(items).to_have_count(shown)
        ids = item_ids(inbox)
        assert len(ids) == len(set(ids)), "repeated items"
        assert ids == expected, "gaps or a different order than PostgreSQL's newest first"
        assert more.count() == 0 or more.is_hidden() or more.is_disabled(), "load more left"

    steps.check()
