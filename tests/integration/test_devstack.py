"""The local stack itself: status, idempotent up, clear errors, and a clean down."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from herald import PROJECT_ROOT
from herald.devstack import stack
from herald.devstack.components import Kafka, Sms, kafka_version
from herald.devstack.process import StackError, free_port, free_ports, port_answers, read_pid
from herald.settings import (
    DatabaseSettings,
    KafkaSettings,
    LocalStackSettings,
    Settings,
    SmsSettings,
    SmtpSettings,
    WebhookSinkSettings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    # Under the project (not /tmp/pytest-of-root, which is 0700): PostgreSQL runs as the
    # 'postgres' user when we are root and must be able to reach its data folder.
    path = PROJECT_ROOT / ".local" / "test-stacks" / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_status_json_reports_every_part_answering(local_stack: Settings) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "herald.cli.main", "dev", "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout)
    parts = {part["name"]: part for part in report["components"]}
    assert {"kafka", "postgres", "smtp", "sms", "webhook_sink"} <= set(parts)
    assert all(part["answering"] for part in parts.values()), parts
    assert f"Apache Kafka {kafka_version()}" in parts["kafka"]["detail"]
    assert parts["postgres"]["detail"].startswith("PostgreSQL")
    assert report["apis"]["read_api"].startswith("http://127.0.0.1:")


def test_second_up_reports_already_up(local_stack: Settings) -> None:
    lines: list[str] = []
    started = stack.up(local_stack, say=lines.append)
    assert started == []
    managed = [part for part in stack.status(local_stack) if part.managed]
    assert len(lines) == len(stack.components(local_stack))
    assert sum("already up" in line for line in lines) == len(managed)


def test_port_taken_is_named_with_its_holder(scratch_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = Settings(
            sms=SmsSettings(sms_api_url=f"http://127.0.0.1:{port}"),
            local=LocalStackSettings(local_dir=scratch_dir),
        )
        with pytest.raises(StackError) as info:
            Sms(settings).start()
    message = str(info.value)
    assert f"port {port}" in message
    assert f"pid {os.getpid()}" in message


def test_missing_java_says_what_to_install(
    scratch_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = scratch_dir / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"),
        local=LocalStackSettings(local_dir=scratch_dir, kafka_controller_port=free_port()),
    )
    with pytest.raises(StackError, match=r"'java' was not found.*apt-get install openjdk"):
        Kafka(settings).fetch_jars()


def test_a_second_stack_comes_up_and_down_leaving_nothing(
    scratch_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole stack on other ports and another folder: up, answering, down, nothing left."""
    # The two SMTP sinks serve their HTTP API on the port after SMTP: pairs.
    smtp, smtp_b, kafka, postgres, sms, hooks, controller, sms_b = free_ports(8, pairs=2)
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{kafka}"),
        database=DatabaseSettings(
            database_url=f"postgresql+psycopg://herald@127.0.0.1:{postgres}/herald"
        ),
        smtp=SmtpSettings(smtp_url=f"smtp://127.0.0.1:{smtp}"),
        sms=SmsSettings(sms_api_url=f"http://127.0.0.1:{sms}"),
        webhook_sink=WebhookSinkSettings(webhook_sink_url=f"http://127.0.0.1:{hooks}"),
        local=LocalStackSettings(
            local_dir=scratch_dir,
            kafka_controller_port=controller,
            smtp_b_port=smtp_b,
            sms_b_port=sms_b,
        ),
    )
    # Reuse the jars the session's stack fetched instead of downloading them again.
    shared_libs = Kafka(Settings()).libs
    if shared_libs.exists():
        (scratch_dir / "kafka").mkdir()
        (scratch_dir / "kafka" / "libs").symlink_to(shared_libs)
    for var in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "DATABASE_URL",
        "SMTP_URL",
        "SMS_API_URL",
        "WEBHOOK_SINK_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    started = stack.up(settings, say=lambda line: None)
    try:
        assert started[:4] == ["postgres", "kafka", "smtp", "sms"]
        assert started == [part.name for part in stack.components(settings)]
        assert "webhook_sink" in started
        assert all(part.answering for part in stack.status(settings))
        pids = [part.owned_pid() for part in stack.components(settings)]
        assert all(pids)
    finally:
        stack.down(settings, say=lambda line: None)
    for part in stack.components(settings):
        assert part.owned_pid() is None
        assert not port_answers(*part.host_port), f"{part.name} still answers"
    for pid in pids:
        assert pid is not None
        assert read_pid_alive(pid) is False


def read_pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_read_pid_ignores_stale_pidfile(scratch_dir: Path) -> None:
    pidfile = scratch_dir / "x.pid"
    pidfile.write_text("999999999\n")
    assert read_pid(pidfile) is None
