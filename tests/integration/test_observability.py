"""The metrics, rules and dashboard of deploy/ against a real Prometheus (issue 11).

A Prometheus server (Debian's ``prometheus`` package, on a free loopback port, its data in
tmp_path) scrapes every service of a short pipeline run once a second and evaluates
deploy/prometheus/rules.yml once a second. The run sends events to every channel, with one
email that fails once (a retry) and one that is refused (a dead letter). Then every query of
deploy/grafana/herald.json, every recording rule and every metric the READMEs name must return
data, and the key numbers must say what happened.

Prometheus is not installed by the test: without it the test is skipped with the reason, and
``deploy/tools/install-prometheus.sh`` installs it (``make deploy-check`` runs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.pipeline import Pipeline, free_port, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "herald.json"
READMES = (ROOT / "deploy" / "README.md", ROOT / "README.md")
#: What the dashboard's Grafana variables stand for in these queries.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "${datasource}": "", "$datasource": ""}

#: The services with a metrics port of their own: scrape job -> environment variable.
METRICS_PORTS = {
    "herald-router": "ROUTER_METRICS_PORT",
    "herald-email-sender": "EMAIL_SENDER_METRICS_PORT",
    "herald-sms-sender": "SMS_SENDER_METRICS_PORT",
    "herald-inapp-store": "INAPP_STORE_METRICS_PORT",
}


def prometheus_binaries() -> tuple[str, str] | None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    return (prometheus, promtool) if prometheus and promtool else None


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    found = prometheus_binaries()
    if found is None:
        reason = (
            "prometheus/promtool not installed: run deploy/tools/install-prometheus.sh (Debian's "
            "prometheus package) before the tests; `make test` should depend on it"
        )
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    return found[0]


@pytest.fixture
def job_ports() -> dict[str, int]:
    """A free port per service metrics endpoint (the pipeline fixture disables them)."""
    return {job: free_port() for job in METRICS_PORTS}


@pytest.fixture
def pipeline_env(job_ports: dict[str, int]) -> dict[str, str]:
    return {
        **{METRICS_PORTS[job]: str(port) for job, port in job_ports.items()},
        "HERALD_KAFKA_METRICS_INTERVAL_SECONDS": "1",
    }


class Prometheus:
    """A running Prometheus server's HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = self.http.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert body.get("status") == "success", f"{expr!r}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, expr: str) -> dict[str, float]:
        """Each series of ``expr`` (its labels, as text) with its value."""
        return {
            json.dumps(series["metric"], sort_keys=True): float(series["value"][1])
            for series in self.query(expr)
        }

    def metric_names(self) -> set[str]:
        response = self.http.get("/api/v1/label/__name__/values")
        return set(response.json()["data"])

    def rules(self) -> list[dict[str, Any]]:
        """Every rule Prometheus loaded, with its health."""
        groups = self.http.get("/api/v1/rules").json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.http.get("/api/v1/targets").json()["data"][
            "activeTargets"
        ]
        return active


@pytest.fixture
def prometheus(
    prometheus_binary: str, pipeline: Pipeline, job_ports: dict[str, int], tmp_path: Path
) -> Iterator[Prometheus]:
    """Prometheus scraping every service of ``pipeline`` each second, with deploy's rules."""
    targets = {job: f"127.0.0.1:{port}" for job, port in job_ports.items()}
    assert pipeline.read_api is not None
    for job, client in (("herald-ingest", pipeline.api), ("herald-read-api", pipeline.read_api)):
        targets[job] = f"{client.base_url.host}:{client.base_url.port}"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(json.dumps(config, indent=2))  # YAML is a superset of JSON
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        try:
            return server.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 30, "Prometheus to be ready")
        yield server
    finally:
        server.http.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        print("----- prometheus -----")
        print((tmp_path / "prometheus.log").read_text()[-3000:])


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard, Grafana variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: a variable the test does not know: {expr}"
            queries.append((panel["title"], expr))
    return queries


def readme_metrics() -> set[str]:
    """Every ``herald_*`` metric the READMEs name (for deploy/README.md, in its metrics
    section)."""
    names: set[str] = set()
    for readme in READMES:
        text = readme.read_text()
        if readme.parent.name == "deploy":
            text = text.split("## Metrics, alerts and the dashboard", 1)[1].split("\n## ", 1)[0]
        names |= set(re.findall(r"`(herald_[a-z0-9_]+)", text))
    return names


def served_names(names: set[str]) -> set[str]:
    """The metric names a histogram or counter ``name`` appears under."""
    return {f"{name}{suffix}" for name in names for suffix in ("", "_total", "_bucket", "_count")}


def test_every_panel_rule_and_named_metric_has_data(
    pipeline: Pipeline, prometheus: Prometheus
) -> None:
    started = time.monotonic()
    pipeline.seed()
    users = {name: pipeline.user(name) for name in ("ann", "ben", "cid", "dee")}
    contacts = {name: pipeline.user_contact(user) for name, user in users.items()}
    # Every target scraped once: the counters' first samples are their zeros.
    wait_for(
        lambda: {t["health"] for t in prometheus.targets()} == {"up"},
        20,
        "Prometheus to scrape every service",
    )

    def publish_wave(n: int) -> None:
        pipeline.publish(
            "comment.created",
            list(users.values()),
            post_title=f"Observability {n}",
            author_name="Eve",
            excerpt="Scraped!",
        )

    def final_count() -> int:
        rows = pipeline.sql(
            "select count(*) from notification_delivery where status in"
            " ('sent','delivered','skipped','failed','dead')"
        )
        return int(rows[0][0])

    # Two waves, the second after Prometheus has seen the first: the series exist before the
    # second increments them, so rates and quantiles have something to show.
    publish_wave(1)
    wait_for(lambda: final_count() >= 12, 60, "12 final statuses of the first wave")
    for channel in ("email", "sms", "inapp"):
        # Every channel's first wave scraped before the second: its rate sees an increase.
        done = f'herald_deliveries_total{{channel="{channel}",status=~"sent|delivered"}} > 0'
        wait_for(partial(prometheus.values, done), 20, f"the first wave scraped on {channel}")
    # In the second wave ben's email fails once (451: a retry, then sent) and cid's is refused
    # (550: the DLQ); the faults are scoped to their addresses (other tests share the sink).
    faults = [
        {"code": 451, "message": "try later", "rcpt": contacts["ben"]["email"], "count": 1},
        {"code": 550, "message": "no such user", "rcpt": contacts["cid"]["email"], "count": 1},
    ]
    for fault in faults:
        httpx.post(f"{pipeline.smtp_api}/faults", json=fault, timeout=10).raise_for_status()
    publish_wave(2)
    wait_for(lambda: final_count() >= 24, 60, "24 final statuses of both waves")
    published = time.monotonic()

    catalogue = pipeline.catalogue
    email_dlq = catalogue.for_channel("email").dlq_name

    queries = dashboard_queries()
    rules = prometheus.rules()
    recording = [rule["name"] for rule in rules if rule["type"] == "recording"]
    assert len(recording) == RULES.read_text().count("- record:"), recording
    alerts = [rule["name"] for rule in rules if rule["type"] == "alerting"]
    assert len(alerts) == RULES.read_text().count("- alert:"), alerts
    names = readme_metrics()
    assert "herald_consumer_lag" in names and "herald_delivery_latency_seconds" in names

    def problems() -> list[str]:
        """What Prometheus does not show yet (a series needs two scrapes for a rate)."""
        found = [
            f"target {t['labels']['job']} is {t['health']}: {t.get('lastError')}"
            for t in prometheus.targets()
            if t["health"] != "up"
        ]
        found += [
            f"no data: panel {title!r}: {expr}"
            for title, expr in queries
            if not prometheus.query(expr)
        ]
        found += [
            f"no data: recording rule {name}" for name in recording if not prometheus.query(name)
        ]
        found += [
            f"unhealthy rule {rule['name']}: {rule.get('lastError')}"
            for rule in prometheus.rules()
            if rule["health"] != "ok"
        ]
        served = prometheus.metric_names()
        found += [
            f"not served: {name} (named in a README)"
            for name in sorted(names)
            if not served_names({name}) & served
        ]
        completed = prometheus.values("channel:herald_deliveries_completed:rate5m > 0")
        channels = {json.loads(k)["channel"] for k in completed}
        found += [f"no deliveries/s on {c}" for c in sorted({"inapp", "email", "sms"} - channels)]
        depth = prometheus.values(f'topic:herald_dlq_depth:max{{topic="{email_dlq}"}} >= 1')
        found += [] if depth else [f"no dead letter counted on {email_dlq}"]
        return found

    left = problems()
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = problems()
    assert not left, "Prometheus does not show:\n" + "\n".join(left)

    # And the numbers say what happened.
    latency = prometheus.values("sum by (channel) (herald_delivery_latency_seconds_count)")
    assert {json.loads(k)["channel"] for k, v in latency.items() if v >= 2} >= {
        "inapp",
        "email",
        "sms",
    }, latency
    p99 = prometheus.values("channel:herald_delivery_latency_seconds:p99_5m")
    assert any(0 < v < 60 for v in p99.values()), p99
    retries = prometheus.values(
        'service_tier:herald_retries:rate5m{service="email_sender", tier="1"}'
    )
    assert retries and all(v > 0 for v in retries.values()), retries
    dead = prometheus.values(f'herald_dead_letters_total{{topic="{email_dlq}"}}')
    assert sum(dead.values()) >= 1, dead
    failed_sends = prometheus.values(
        'herald_sender_provider_seconds_count{channel="email", outcome="error"}'
    )
    assert sum(failed_sends.values()) >= 2, failed_sends
    groups = {
        json.loads(k)["group"] for k in prometheus.values("group_topic:herald_consumer_lag:sum")
    }
    prefix = pipeline.settings.kafka.topic_prefix
    assert {f"{prefix}{g}" for g in ("herald-router", "email_sender", "sms_sender")} | {
        f"{prefix}inapp_store"
    } <= groups, groups
    breakers = prometheus.values("max by (channel) (herald_sender_circuit_open)")
    assert sorted(json.loads(k)["channel"] for k in breakers) == ["email", "sms"], breakers
    print(
        f"observability: pipeline run {published - started:.1f} s, checks "
        f"{time.monotonic() - published:.1f} s; {len(queries)} dashboard queries, "
        f"{len(recording)} recording rules, {len(alerts)} alerts, {len(names)} README metrics"
    )
    for expr in (
        "channel:herald_delivery_latency_seconds:p50_5m",
        "channel:herald_delivery_latency_seconds:p99_5m",
        "channel:herald_sender_provider_seconds:p99_5m",
        "topic:herald_dlq_depth:max > 0",
        "service_tier:herald_retries:rate5m > 0",
        'ALERTS{alertstate="firing"}',
        'sum by (le) (herald_delivery_latency_seconds_bucket{channel="email"})',
    ):
        print(f"  {expr}: {sorted(prometheus.values(expr).items())}")
