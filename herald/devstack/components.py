"""The parts of the local stack. Each knows its address, whether it is ours to run (an
environment variable pointing elsewhere makes it external), how to start, stop and check it."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from herald import PROJECT_ROOT
from herald.devstack.process import (
    StackError,
    ensure_port_free,
    port_answers,
    read_pid,
    spawn,
    terminate,
    wait_until,
)
from herald.settings import (
    DEFAULT_KAFKA_PORT,
    DEFAULT_POSTGRES_PORT,
    DEFAULT_SMS_PORT,
    DEFAULT_SMTP_PORT,
    DEFAULT_WEBHOOK_SINK_PORT,
    Settings,
)

KAFKA_POM = PROJECT_ROOT / "deploy" / "kafka" / "pom.xml"
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def kafka_version() -> str:
    """The Apache Kafka version pinned in deploy/kafka/pom.xml."""
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", KAFKA_POM.read_text())
    if not match:
        raise StackError(f"{KAFKA_POM} does not pin <kafka.version>")
    return match.group(1)


@dataclass
class Status:
    name: str
    address: str
    managed: bool
    answering: bool
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "address": self.address,
            "managed": self.managed,
            "answering": self.answering,
            "detail": self.detail,
        }


class Component:
    """One part of the stack. Subclasses fill in the specifics."""

    name = ""
    env_var = ""
    default_address = ""
    start_timeout = 60.0

    def __init__(self, settings: Settings, *, private: bool = False) -> None:
        self.settings = settings
        #: A private stack (the chaos suite's, on its own ports and folder) is always ours to
        #: run, whatever the environment variables of this process say.
        self.private = private
        self.dir = settings.local.local_dir / self.name
        self.pidfile = self.dir / f"{self.name}.pid"
        self.log = self.dir / f"{self.name}.log"

    # -- addressing -----------------------------------------------------------------------
    @property
    def host_port(self) -> tuple[str, int]:
        raise NotImplementedError

    @property
    def address(self) -> str:
        host, port = self.host_port
        return f"{host}:{port}"

    @property
    def managed(self) -> bool:
        """Ours to run, unless its environment variable points at another address."""
        if self.private:
            return True
        value = os.environ.get(self.env_var)
        return value is None or value == self.default_address

    # -- lifecycle ------------------------------------------------------------------------
    def answering(self) -> bool:
        return port_answers(*self.host_port)

    def owned_pid(self) -> int | None:
        return read_pid(self.pidfile)

    def start(self) -> str:
        """Start it if needed; return a one-line account of what happened."""
        if not self.managed:
            return f"{self.name}: external at {self.address}, not started here"
        if self.owned_pid() is not None and self.answering():
            return f"{self.name}: already up at {self.address}"
        if self.owned_pid() is None:
            ensure_port_free(self.host_port[1], self.name)
            self.dir.mkdir(parents=True, exist_ok=True)
            self._launch()
        wait_until(
            self.ready,
            self.start_timeout,
            f"{self.name} at {self.address}",
            self.log,
            alive=lambda: self.owned_pid() is not None,
        )
        return f"{self.name}: up at {self.address}"

    def ready(self) -> bool:
        return self.answering()

    def stop(self) -> str:
        if not self.managed:
            return f"{self.name}: external, left alone"
        return f"{self.name}: {'stopped' if terminate(self.pidfile, self.name) else 'not running'}"

    def status(self) -> Status:
        return Status(self.name, self.address, self.managed, self.ready(), self.detail())

    def detail(self) -> str:
        return ""

    def _launch(self) -> None:
        raise NotImplementedError


class Kafka(Component):
    """Apache Kafka in KRaft mode (one combined broker + controller) from Maven Central jars."""

    name = "kafka"
    env_var = "KAFKA_BOOTSTRAP_SERVERS"
    default_address = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
    start_timeout = 90.0

    def __init__(
        self, settings: Settings, *, private: bool = False, libs: Path | None = None
    ) -> None:
        super().__init__(settings, private=private)
        #: Where the jars are; a private stack reuses the shared stack's instead of refetching.
        self._libs = libs

    @property
    def host_port(self) -> tuple[str, int]:
        return self.settings.kafka.first_address

    @property
    def address(self) -> str:
        return self.settings.kafka.bootstrap_servers

    @property
    def libs(self) -> Path:
        return self._libs or self.dir / "libs"

    def detail(self) -> str:
        return f"Apache Kafka {kafka_version()} (KRaft)"

    def ready(self) -> bool:
        if not self.answering():
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.address, "socket.timeout.ms": 2000})
        try:
            metadata = admin.list_topics(timeout=2)
        except Exception:
            return False
        return bool(metadata.brokers)

    def fetch_jars(self) -> None:
        """Fetch the pinned Kafka jars with Maven once; later starts reuse them."""
        version = kafka_version()
        stamp = self.libs / f".complete-{version}"
        if stamp.exists():
            return
        for tool, package in (("java", "openjdk-17-jre-headless"), ("mvn", "maven")):
            if shutil.which(tool) is None:
                raise StackError(
                    f"'{tool}' was not found on PATH; the local Kafka needs Java 17+ and Maven."
                    f" Install them (Debian: apt-get install {package}) or set"
                    " KAFKA_BOOTSTRAP_SERVERS to an existing cluster."
                )
        if self.libs.exists():
            shutil.rmtree(self.libs)
        self.libs.mkdir(parents=True)
        print(f"kafka: fetching Apache Kafka {version} jars from Maven Central (once)...")
        result = subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(KAFKA_POM),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.libs}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise StackError(
                "Maven could not fetch the Kafka jars:\n" + (result.stdout + result.stderr)[-2000:]
            )
        stamp.touch()

    def _write_config(self) -> Path:
        host, port = self.host_port
        controller = self.settings.local.kafka_controller_port
        data = self.dir / "data"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://127.0.0.1:{controller}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            # Fast tests: no waiting for more members before the first rebalance.
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            # Topics come from the catalogue (`herald topics create`); Faust creates its own
            # changelog topics through the admin API, so automatic creation stays off.
            "auto.create.topics.enable": "false",
            # Let the log cleaner look often so compaction is observable in tests.
            "log.cleaner.backoff.ms": "500",
            "log.retention.check.interval.ms": "30000",
        }
        path = self.dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = self.dir / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=INFO, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka=INFO\nlog4j.logger.org.apache.kafka=INFO\n"
            "log4j.logger.state.change.logger=WARN\n"
        )
        return path

    def _java(self, *args: str) -> list[str]:
        heap = self.settings.local.kafka_heap
        return [
            "java", f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp", f"{self.libs}/*", *args,
        ]  # fmt: skip

    def _launch(self) -> None:
        self.fetch_jars()
        ensure_port_free(self.settings.local.kafka_controller_port, "the Kafka controller")
        config = self._write_config()
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = self._cluster_id()
            result = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)
                ),
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                output = (result.stdout + result.stderr).strip()
                raise StackError("formatting Kafka storage failed:\n" + output[-2000:])
        spawn(self._java("kafka.Kafka", str(config)), pidfile=self.pidfile, log=self.log)

    def _cluster_id(self) -> str:
        path = self.dir / "cluster.id"
        if not path.exists() or not valid_cluster_id(path.read_text().strip()):
            path.write_text(new_cluster_id())
        return path.read_text().strip()


def valid_cluster_id(value: str) -> bool:
    """A KRaft cluster id: 22 base64url characters, not starting with '-'.

    An id with a leading dash is read by kafka-storage's argument parser as an option
    (`-t -abc…` fails with "expected one argument"); Kafka's own Uuid.randomUuid()
    never hands one out for that reason.
    """
    return len(value) == 22 and not value.startswith("-")


def new_cluster_id() -> str:
    while True:
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if valid_cluster_id(raw):
            return raw


class Postgres(Component):
    """PostgreSQL from the machine's own server binaries (initdb, pg_ctl)."""

    name = "postgres"
    env_var = "DATABASE_URL"
    #: "off" makes the dev stack fast, but a server crash then forgets the last ~0.6 s of
    #: acknowledged commits; the chaos suite's private stack, which kills it, runs with "on"
    #: (PostgreSQL's default, as in production).
    synchronous_commit = "off"
    default_address = f"postgresql+psycopg://herald@127.0.0.1:{DEFAULT_POSTGRES_PORT}/herald"

    @property
    def host_port(self) -> tuple[str, int]:
        return self.settings.database.address

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def managed(self) -> bool:
        if self.private:
            return True
        value = os.environ.get(self.env_var)
        return value is None or self.settings.database.database_url == self.default_address

    def _bin(self, tool: str) -> str:
        for directory in PG_BIN_DIRS:
            if (directory / tool).exists():
                return str(directory / tool)
        found = shutil.which(tool)
        if found:
            return found
        raise StackError(
            f"PostgreSQL's '{tool}' was not found (looked in /usr/lib/postgresql/*/bin and PATH)."
            " Install the server (Debian: apt-get install postgresql) or set DATABASE_URL."
        )

    def _as_owner(self, argv: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root: run its tools as the 'postgres' user then.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def owned_pid(self) -> int | None:
        return read_pid(self.data / "postmaster.pid")

    def detail(self) -> str:
        version = Path(self.data / "PG_VERSION")
        return f"PostgreSQL {version.read_text().strip()}" if version.exists() else "PostgreSQL"

    def ready(self) -> bool:
        if not self.answering():
            return False
        import psycopg

        try:
            with psycopg.connect(self.settings.database.libpq_url, connect_timeout=2) as conn:
                conn.execute("select 1")
        except psycopg.Error:
            return False
        return True

    def _launch(self) -> None:
        host, port = self.host_port
        run_dir = self.dir / "run"
        run_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(run_dir, "postgres", "postgres")
            self.log.touch()
            shutil.chown(self.log, "postgres", "postgres")
        fresh = not (self.data / "PG_VERSION").exists()
        if fresh:
            self._run(
                [self._bin("initdb"), "-D", str(self.data), "-U", "herald", "--auth=trust",
                 "--encoding=UTF8", "--no-instructions"],
                "initdb",
            )  # fmt: skip
        options = (
            f"-p {port} -k {run_dir} -c listen_addresses={host} -c fsync=off"
            f" -c synchronous_commit={self.synchronous_commit} -c full_page_writes=off"
            " -c max_connections=200"
        )
        self._run(
            [self._bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log),
             "-w", "-t", "60", "start"],
            "pg_ctl start",
        )  # fmt: skip
        if fresh:
            self._run(
                [self._bin("createdb"), "-h", host, "-p", str(port), "-U", "herald", "herald"],
                "createdb",
            )

    def _run(self, argv: list[str], what: str) -> None:
        result = subprocess.run(self._as_owner(argv), capture_output=True, text=True)
        if result.returncode != 0:
            hint = ""
            if "Permission denied" in result.stderr and os.geteuid() == 0:
                hint = (
                    f"\nThe 'postgres' user must be able to reach {self.dir}: every parent folder"
                    " needs o+x, or set HERALD_LOCAL_DIR to a folder it can reach."
                )
            raise StackError(f"{what} failed:\n{result.stdout}{result.stderr}{hint}")

    def stop(self) -> str:
        if not self.managed:
            return f"{self.name}: external, left alone"
        if self.owned_pid() is None:
            return f"{self.name}: not running"
        self._run([self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], "stop")
        return f"{self.name}: stopped"


class Smtp(Component):
    """An SMTP server (aiosmtpd) that accepts and stores every message for inspection."""

    name = "smtp"
    env_var = "SMTP_URL"
    default_address = f"smtp://127.0.0.1:{DEFAULT_SMTP_PORT}"
    start_timeout = 30.0

    @property
    def host_port(self) -> tuple[str, int]:
        return self.settings.smtp.address

    @property
    def api_port(self) -> int:
        return self.host_port[1] + 1

    def detail(self) -> str:
        return f"aiosmtpd sink; messages at http://127.0.0.1:{self.api_port}/messages"

    def ready(self) -> bool:
        return self.answering() and port_answers("127.0.0.1", self.api_port)

    def _launch(self) -> None:
        ensure_port_free(self.api_port, "the SMTP sink's HTTP API")
        host, port = self.host_port
        spawn(
            [sys.executable, "-m", "herald.devstack.smtp_sink", "--host", host,
             "--port", str(port), "--api-port", str(self.api_port),
             "--store", str(self.dir / "messages")],
            pidfile=self.pidfile,
            log=self.log,
        )  # fmt: skip


class Sms(Component):
    """An HTTP SMS provider stand-in shaped like a real provider's REST API."""

    name = "sms"
    env_var = "SMS_API_URL"
    default_address = f"http://127.0.0.1:{DEFAULT_SMS_PORT}"
    start_timeout = 30.0

    @property
    def host_port(self) -> tuple[str, int]:
        return self.settings.sms.address

    @property
    def address(self) -> str:
        return self.settings.sms.sms_api_url

    def detail(self) -> str:
        return "SMS provider stand-in (Twilio-shaped Messages API)"

    def _launch(self) -> None:
        host, port = self.host_port
        spawn(
            [sys.executable, "-m", "herald.devstack.sms_standin", "--host", host,
             "--port", str(port), "--store", str(self.dir / "messages.jsonl")],
            pidfile=self.pidfile,
            log=self.log,
        )  # fmt: skip


class WebhookSink(Component):
    """Where local users' webhook and Slack endpoints point: records every request."""

    name = "webhook_sink"
    env_var = "WEBHOOK_SINK_URL"
    default_address = f"http://127.0.0.1:{DEFAULT_WEBHOOK_SINK_PORT}"
    start_timeout = 30.0

    @property
    def host_port(self) -> tuple[str, int]:
        return self.settings.webhook_sink.address

    @property
    def address(self) -> str:
        return self.settings.webhook_sink.webhook_sink_url

    def detail(self) -> str:
        return f"webhook/Slack sink; requests at {self.address}/requests"

    def _launch(self) -> None:
        host, port = self.host_port
        spawn(
            [sys.executable, "-m", "herald.devstack.webhook_sink", "--host", host,
             "--port", str(port)],
            pidfile=self.pidfile,
            log=self.log,
        )  # fmt: skip


class SmtpB(Smtp):
    """A second SMTP sink (``smtp-b``): the email sender's failover relay in the local stack."""

    name = "smtp-b"
    env_var = ""
    default_address = ""

    @property
    def host_port(self) -> tuple[str, int]:
        return "127.0.0.1", self.settings.local.smtp_b_port

    @property
    def managed(self) -> bool:
        return True

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.host_port[1]}"

    def detail(self) -> str:
        return f"failover relay smtp-b; {super().detail()}"


class SmsB(Sms):
    """A second SMS stand-in (``sms-b``): the SMS sender's failover provider locally."""

    name = "sms-b"
    env_var = ""
    default_address = ""

    @property
    def host_port(self) -> tuple[str, int]:
        return "127.0.0.1", self.settings.local.sms_b_port

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.host_port[1]}"

    @property
    def managed(self) -> bool:
        return True

    def detail(self) -> str:
        return f"failover provider sms-b; {super().detail()}"


def local_failover_env(settings: Settings) -> dict[str, str]:
    """The environment that points the senders at the local stack's second providers
    (``SMTP_FALLBACK_URLS``, ``SMS_API_FALLBACK_URLS``), for each channel whose primary is
    the local stand-in and whose fallbacks are not set already (``herald run``)."""
    env: dict[str, str] = {}
    if Smtp(settings).managed and not settings.smtp.smtp_fallback_urls:
        env["SMTP_FALLBACK_URLS"] = SmtpB(settings).url
    if Sms(settings).managed and not settings.sms.sms_api_fallback_urls:
        env["SMS_API_FALLBACK_URLS"] = SmsB(settings).address
    return env


def components(
    settings: Settings, *, private: bool = False, kafka_libs: Path | None = None
) -> list[Component]:
    """The stack's parts in start order.

    ``private``: a stack of its own (ports and folder from ``settings``), always run here
    whatever the environment says; ``kafka_libs``: jars to reuse instead of fetching them.
    """
    return [
        Postgres(settings, private=private),
        Kafka(settings, private=private, libs=kafka_libs),
        Smtp(settings, private=private),
        Sms(settings, private=private),
        # The failover providers (smtp-b, sms-b); not in a private (chaos) stack.
        *([] if private else [SmtpB(settings), SmsB(settings)]),
        # Not in a private (chaos) stack: nothing there sends webhooks.
        *([] if private else [WebhookSink(settings)]),
    ]
