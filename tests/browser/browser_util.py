"""Helpers of the browser tests: soft steps that screenshot every state, the axe-core check,
publishing many events at once."""

from __future__ import annotations

import json
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from herald.producer import AckedProducer
from herald.streaming import Outgoing, producer_config
from tests.integration.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]
#: Screenshots and axe reports of every state (git-ignored: .local/).
ARTIFACTS = ROOT / ".local" / "artifacts" / "browser"
#: axe-core as tests/browser/install.sh installs it (npm ci of package-lock.json).
AXE_JS = ROOT / ".local" / "tools" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
#: Where the page loads axe-core from (answered by Playwright, never reaching the server).
AXE_URL_PATH = "/__browser-tests__/axe.min.js"
#: axe impacts that fail the test.
BLOCKING_IMPACTS = ("serious", "critical")


@dataclass
class Steps:
    """Named steps of one long browser walk (one pipeline serves them all). A failing step is
    recorded with its screenshot and the walk goes on, so one run reports every scenario;
    :meth:`check` fails the test at the end if any step failed."""

    page: Any
    prefix: str
    passed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _count: int = 0

    def shot(self, name: str) -> Path:
        """A full-page screenshot as ``<prefix>-NN-<name>.png`` under the artifacts folder."""
        self._count += 1
        path = ARTIFACTS / f"{self.prefix}-{self._count:02d}-{name}.png"
        try:
            self.page.screenshot(path=str(path), full_page=True)
        except Exception as exc:  # a screenshot must never hide the step's own outcome
            print(f"screenshot {path.name} failed: {exc}")
        return path

    @contextmanager
    def step(self, name: str, screenshot: bool = True) -> Iterator[None]:
        """Run the block as step ``name``; its screenshot afterwards (always on failure)."""
        started = time.monotonic()
        print(f"--- step {name}")
        try:
            yield
        except Exception as exc:  # AssertionError, Playwright errors, HTTP errors alike
            self.failed.append((name, f"{type(exc).__name__}: {exc}"))
            traceback.print_exc()
            self.shot(f"{name}-FAILED")
        else:
            self.passed.append(name)
            if screenshot:
                self.shot(name)
        finally:
            self.timings[name] = round(time.monotonic() - started, 2)

    def check(self) -> None:
        print(f"steps passed: {self.passed}")
        print(f"step timings (s): {self.timings}")
        summary = "\n".join(f"  {name}: {error[:800]}" for name, error in self.failed)
        assert not self.failed, f"{len(self.failed)} browser step(s) failed:\n{summary}"


def axe_violations(page: Any, name: str) -> list[dict[str, Any]]:
    """Run axe-core (injected into ``page``) over the whole document, open shadow roots
    included; writes the report next to the screenshots and returns the serious and critical
    violations."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Served as a same-origin script (Playwright answers the request from the installed
        # file), so the page's Content-Security-Policy (script-src 'self') admits it as it is.
        page.route(
            f"**{AXE_URL_PATH}",
            lambda route: route.fulfill(path=str(AXE_JS), content_type="text/javascript"),
        )
        page.add_script_tag(url=AXE_URL_PATH)
    violations: list[dict[str, Any]] = page.evaluate(
        """async () => {
            const results = await window.axe.run(document, {resultTypes: ["violations"]});
            return results.violations.map(v => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => ({target: n.target, html: n.html.slice(0, 300)})),
            }));
        }"""
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"axe-{name}.json").write_text(json.dumps(violations, indent=2), "utf-8")
    return [v for v in violations if v["impact"] in BLOCKING_IMPACTS]


def publish_many(
    pipeline: Pipeline, event_type: str, user: str, count: int, **context: str
) -> list[str]:
    """``count`` events of ``event_type`` to ``user``, encoded by the plain-fastavro example
    producer and sent to Kafka in one batch; their ids."""
    records, ids = [], []
    for n in range(count):
        event_id = str(uuid.uuid4())
        event = {
            "event_id": event_id,
            "event_type": event_type,
            "occurred_at": datetime.now(UTC),
            "producer": "browser-test",
            "actor_id": None,
            "recipients": [user],
            "context": {key: value.format(n=n) for key, value in context.items()},
            "metadata": {},
        }
        records.append(
            Outgoing(pipeline.catalogue.events.name, event_id, pipeline.encode_event(event))
        )
        ids.append(event_id)
    refused = AckedProducer(producer_config(pipeline.kafka)).deliver(records)
    assert not refused, f"Kafka refused {len(refused)} events: {refused[0].error}"
    return ids
