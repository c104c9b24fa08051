"""Fixtures for the browser tests: the integration fixtures (the real local stack and the whole
``pipeline``), re-exported, plus Debian's Chromium driven headless by Playwright from PyPI.

Chromium comes from ``deploy/tools/install-chromium.sh`` (``apt-get install chromium``) and
axe-core from ``tests/browser/install.sh`` (npm, pinned in package-lock.json); Playwright's own
browser download does not work on these machines, so Playwright is pointed at
``/usr/bin/chromium``. Without Chromium or Playwright the tests skip, saying why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.browser_util import ARTIFACTS, AXE_JS
from tests.integration.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    db_settings,
    kafka_settings,
    local_stack,
    pipeline,
    pipeline_env,
    prefix,
    run_service,
    topics,
)

#: Debian's Chromium (a wrapper script that starts the real binary).
CHROMIUM = os.environ.get("HERALD_CHROMIUM", "/usr/bin/chromium")
#: As the machines' notes give them: without the background-networking flags Chromium keeps
#: trying to reach Google's hosts, which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (a fresh temporary profile: Playwright makes a new user-data-dir).

    Module-scoped on purpose: Playwright's sync API keeps an asyncio loop running in this
    thread while it is started, and every later ``asyncio.run`` (other modules' tests) would
    fail with "cannot be called from a running event loop"."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[dev]'")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}: run deploy/tools/install-chromium.sh")
    if not AXE_JS.is_file():
        pytest.fail(f"axe-core is not installed ({AXE_JS}): run tests/browser/install.sh")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a new browser context (no cookies or storage shared between tests); every
    console message is kept on ``page.herald_console`` for the Content-Security-Policy check."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))

    def refused(response: Any) -> None:
        if response.status >= 400:
            console.append(f"http {response.status}: {response.url.split('?')[0]}")

    page.on("response", refused)
    page.herald_console = console
    try:
        yield page
    finally:
        if console:
            print("----- browser console -----")
            print("\n".join(console[-60:]))
        context.close()
