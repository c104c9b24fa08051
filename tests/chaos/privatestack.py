"""A private local stack for the chaos suite: its own Kafka (KRaft), PostgreSQL, SMTP sink, two
SMS stand-ins (the primary ``sms-a`` and the failover ``sms-b``) and a webhook sink on free
loopback ports, in its own folder, started and stopped here.

The chaos run SIGKILLs the broker and the database, so it never touches the shared stack
(19092/15432) that other tests use. The Kafka jars of the shared stack are reused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from herald import PROJECT_ROOT
from herald.devstack.components import (
    Component,
    Kafka,
    Postgres,
    Sms,
    SmsB,
    Smtp,
    WebhookSink,
    components,
)
from herald.devstack.process import StackError, free_ports, read_pid
from herald.settings import (
    DatabaseSettings,
    KafkaSettings,
    LocalStackSettings,
    Settings,
    SmsSettings,
    SmtpSettings,
    WebhookSinkSettings,
    get_settings,
)

#: Where private stacks keep their state (one folder per label, wiped at start). Under
#: ``.local/`` because PostgreSQL runs as the ``postgres`` user, which must reach the folder
#: (pytest's temporary folders are private to root).
CHAOS_DIR = PROJECT_ROOT / ".local" / "chaos"


def private_settings(state_dir: Path) -> Settings:
    """Settings of a stack on free ports with its state in ``state_dir``."""
    smtp, kafka, controller, postgres, sms, sms_b, hooks = free_ports(7, pairs=1)
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{kafka}", topic_prefix=""),
        database=DatabaseSettings(
            database_url=f"postgresql+psycopg://herald@127.0.0.1:{postgres}/herald",
            database_schema="public",
        ),
        smtp=SmtpSettings(smtp_url=f"smtp://127.0.0.1:{smtp}"),
        sms=SmsSettings(sms_api_url=f"http://127.0.0.1:{sms}"),
        webhook_sink=WebhookSinkSettings(webhook_sink_url=f"http://127.0.0.1:{hooks}"),
        local=LocalStackSettings(
            local_dir=state_dir,
            kafka_controller_port=controller,
            kafka_heap="512m",
            sms_b_port=sms_b,
        ),
    )


def _descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ... (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited completely. A killed multi-threaded process (the JVM) shows
    its main thread as a zombie while the other threads still run and hold its sockets, so a
    zombie counts as gone only once it has no other thread left."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except (OSError, IndexError):
        return True
    return state in ("Z", "X") and threads <= 1


def sigkill_tree(pid: int, timeout: float = 15.0) -> None:
    """SIGKILL ``pid`` and every process below it, as a crash would, and wait until gone."""
    victims = [pid, *_descendants(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while not all(_gone(v) for v in victims):
        if time.monotonic() > deadline:
            raise StackError(f"processes {victims} survived SIGKILL for {timeout:.0f}s")
        time.sleep(0.05)


class PrivateStack:
    """Kafka, PostgreSQL, SMTP sink, SMS stand-ins and webhook sink of one chaos run, in
    ``CHAOS_DIR/label``."""

    def __init__(self, label: str, say: Callable[[str], None] = print) -> None:
        self.state_dir = CHAOS_DIR / label
        self.say = say
        self.settings = private_settings(self.state_dir)
        shared_libs = get_settings().local.local_dir / "kafka" / "libs"
        self.parts = components(self.settings, private=True, kafka_libs=shared_libs)
        # The parts components() leaves out of a private stack: the SMS failover provider and
        # the sink of the users' webhook endpoints.
        self.parts += [SmsB(self.settings, private=True), WebhookSink(self.settings, private=True)]
        # Production keeps acknowledged commits across a server crash; the dev stack's "off"
        # would make the PostgreSQL SIGKILL lose the last commits by configuration.
        self.postgres.synchronous_commit = "on"
        self.started: list[Component] = []

    def part(self, kind: type[Component]) -> Component:
        return next(p for p in self.parts if isinstance(p, kind))

    @property
    def kafka(self) -> Kafka:
        part = self.part(Kafka)
        assert isinstance(part, Kafka)
        return part

    @property
    def postgres(self) -> Postgres:
        part = self.part(Postgres)
        assert isinstance(part, Postgres)
        return part

    @property
    def smtp(self) -> Smtp:
        part = self.part(Smtp)
        assert isinstance(part, Smtp)
        return part

    @property
    def sms(self) -> Sms:
        """The primary SMS provider, ``sms-a`` (not the failover one)."""
        part = next(p for p in self.parts if type(p) is Sms)
        assert isinstance(part, Sms)
        return part

    @property
    def sms_b(self) -> SmsB:
        """The failover SMS provider, ``sms-b`` (``SMS_API_FALLBACK_URLS``)."""
        part = self.part(SmsB)
        assert isinstance(part, SmsB)
        return part

    @property
    def webhook_sink(self) -> WebhookSink:
        part = self.part(WebhookSink)
        assert isinstance(part, WebhookSink)
        return part

    def up(self) -> None:
        """Wipe the folder of a previous run with this label and start every part."""
        self.stop_leftovers()
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True)
        if os.geteuid() == 0:
            # PostgreSQL runs as 'postgres': it must traverse the folder.
            self.state_dir.chmod(0o755)
            self.state_dir.parent.chmod(0o755)
        for part in self.parts:
            self.started.append(part)
            self.say(part.start())

    def down(self) -> None:
        """Stop every part this stack started (and any left by a killed run of this label)."""
        for part in reversed(self.parts):
            try:
                self.say(part.stop())
            except StackError as exc:
                self.say(f"{part.name}: stop failed ({exc}); killing it")
                self._kill(part)
        self.started.clear()

    def stop_leftovers(self) -> None:
        """A previous run of this label that was itself killed may have left processes."""
        for part in self.parts:
            pid = part.owned_pid() if isinstance(part, Postgres) else read_pid(part.pidfile)
            if pid is not None:
                self.say(f"{part.name}: killing pid {pid} left by an earlier run")
                sigkill_tree(pid)

    def _kill(self, part: Component) -> None:
        pid = part.owned_pid()
        if pid is not None:
            sigkill_tree(pid)

    def crash(self, part: Component) -> float:
        """SIGKILL ``part`` (and its children, e.g. PostgreSQL's backends), start it again,
        wait until it answers; returns the seconds it was down."""
        began = time.monotonic()
        pid = part.owned_pid()
        if pid is None:
            raise StackError(f"{part.name} is not running; nothing to kill")
        sigkill_tree(pid)
        deadline = time.monotonic() + part.start_timeout * 2
        while part.answering():  # its listening socket goes with the last thread
            if time.monotonic() > deadline:
                raise StackError(f"{part.name} still answers after SIGKILL")
            time.sleep(0.05)
        while True:
            try:
                part.start()
                break
            except StackError as exc:
                # e.g. the old listening socket not released yet; try again until the deadline.
                if time.monotonic() > deadline:
                    raise
                first = str(exc).strip().splitlines()[0]
                self.say(f"{part.name}: restart failed ({first}); retrying")
                time.sleep(1)
        if part.owned_pid() in (None, pid):
            raise StackError(f"{part.name} was not started again after SIGKILL")
        return time.monotonic() - began
