"""Run Herald's services as child processes (``python -m services.<name>``).

Used by ``herald run``, the benchmark and the tests, so all three start services the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from herald import PROJECT_ROOT

#: Every service, in start order: the sink first so nothing waits on it.
SERVICES = (
    "services.inapp_store",
    "services.router",
    "services.email_sender",
    "services.sms_sender",
    "services.ingest",
    "services.inapp_store.api",
)


@dataclass
class ServiceProcess:
    """One running service, its process and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def running(self) -> bool:
        return self.proc.poll() is None

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
    name = name or module.removeprefix("services.").replace(".", "-")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}-{time.time_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return ServiceProcess(name, proc, log)


def stop_all(services: Iterable[ServiceProcess], timeout: float = 30.0) -> None:
    """SIGTERM every service at once, then wait for each (SIGKILL after ``timeout``)."""
    services = list(services)
    for service in services:
        if service.running():
            service.proc.send_signal(signal.SIGTERM)
    for service in services:
        service.stop(timeout=timeout)


def answers(url: str) -> bool:
    """Whether an HTTP endpoint answers 200 (e.g. an API's ``/readyz``)."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_answers(url: str, timeout: float, stop: Callable[[], bool] = lambda: False) -> bool:
    """Poll ``url`` until it answers 200 (True), ``timeout`` passes or ``stop()`` (False)."""
    deadline = time.monotonic() + timeout
    while not stop():
        if answers(url):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return False
