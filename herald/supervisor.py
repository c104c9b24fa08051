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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from herald import PROJECT_ROOT

#: Every service, in start order: the sink first so nothing waits on it.
SERVICES = (
    "services.inapp_store",
    "services.router",
    "services.email_sender",
    "services.sms_sender",
    "services.webhook_sender",
    "services.webhook_sender.slack",
    "services.ingest",
    "services.inapp_store.api",
)


@dataclass
class ServiceProcess:
    """One running service, its process and its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    #: How it was started, so that :class:`Supervisor` can start it again.
    module: str = ""
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    started_at: float = field(default_factory=time.monotonic)

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
    return ServiceProcess(name, proc, log, module, dict(env), tuple(args))


class Supervisor:
    """Restart services that exit, as systemd or Kubernetes would in production.

    A service that exits (a crash, a SIGKILL, an exit on a fault it could not ride out) is
    started again after a pause that doubles from ``initial`` up to ``maximum`` on every exit in
    a row, and starts over from ``initial`` once the service stayed up ``stable_after`` seconds.
    Call :meth:`check` regularly (e.g. once a second); it never blocks. ``say`` logs each exit
    and restart.
    """

    def __init__(
        self,
        log_dir: Path,
        say: Callable[[str], None],
        *,
        initial: float = 1.0,
        maximum: float = 30.0,
        stable_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_dir = log_dir
        self.say = say
        self.initial = initial
        self.maximum = maximum
        self.stable_after = stable_after
        self.clock = clock
        self.services: list[ServiceProcess] = []
        #: Per service name: the current back-off and when the pending restart is due.
        self._delay: dict[str, float] = {}
        self._due: dict[str, float] = {}
        self.restarts = 0

    def start(self, module: str, env: dict[str, str] | None = None, *args: str) -> ServiceProcess:
        """Start ``module`` and keep it running."""
        service = start_service(module, env or {}, self.log_dir, *args)
        self.services.append(service)
        return service

    def check(self) -> None:
        """Notice exits and start whatever is due again."""
        now = self.clock()
        for index, service in enumerate(self.services):
            if service.running():
                continue
            if service.name not in self._due:
                uptime = now - service.started_at
                delay = self._delay.get(service.name, 0.0)
                if uptime >= self.stable_after or not delay:
                    delay = self.initial
                else:
                    delay = min(delay * 2, self.maximum)
                self._delay[service.name] = delay
                self._due[service.name] = now + delay
                self.say(
                    f"{service.name} exited with {service.proc.returncode} after {uptime:.0f} s;"
                    f" restarting in {delay:g} s (log: {service.log})"
                )
            elif now >= self._due[service.name]:
                del self._due[service.name]
                again = start_service(
                    service.module, service.env, self.log_dir, *service.args, name=service.name
                )
                again.started_at = now
                self.services[index] = again
                self.restarts += 1
                self.say(f"{service.name} restarted (pid {again.proc.pid}, log: {again.log})")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every service (no restarts after this)."""
        self._due.clear()
        stop_all(self.services, timeout)
        self.services.clear()


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
