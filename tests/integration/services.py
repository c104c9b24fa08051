"""Running Herald's services as real processes in tests (``python -m services.<name>``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from herald import PROJECT_ROOT
from herald.settings import DatabaseSettings, KafkaSettings

#: Short retry tiers for tests (the catalogue's defaults are 30 s, 5 min, 30 min).
TEST_RETRY_DELAYS_MS = "500,1000,2000"


def service_env(
    kafka: KafkaSettings, database: DatabaseSettings | None = None, **extra: str
) -> dict[str, str]:
    """Environment for a service process bound to this test's topics and schema."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "HERALD_RETRY_DELAYS_MS": TEST_RETRY_DELAYS_MS,
        "PYTHONUNBUFFERED": "1",
    }
    if database is not None:
        env["DATABASE_URL"] = database.database_url
        env["DATABASE_SCHEMA"] = database.database_schema
    env.update(extra)
    return env


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the service and wait for it to exit; SIGKILL if it does not in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_service(
    module: str, env: dict[str, str], log_dir: Path, *args: str, name: str | None = None
) -> ServiceProcess:
    """Start ``python -m <module> [args]`` with ``env`` on top of this process's environment."""
    name = name or module.rsplit(".", 1)[-1]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}-{time.time_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=PROJECT_ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return ServiceProcess(name, proc, log)
