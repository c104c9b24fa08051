"""Small, dependable process plumbing for the local stack: pid files, ports, waiting."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class StackError(RuntimeError):
    """A local-stack problem with a message meant for a person, not a traceback."""


#: Where ``free_port`` looks: below Linux's ephemeral range (32768-60999), so an outgoing
#: connection cannot take the port between the choice and the server's bind, and above the
#: local stack's fixed ports (12525-19093).
FREE_PORT_RANGE = (20000, 32767)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on loopback right now (for a private stand-in, a test's service).

    Never one this process handed out before, nor the port after one (the SMTP sink serves
    its HTTP API on its port + 1), nor one in the ephemeral range that clients' connections
    draw from.
    """
    low, high = FREE_PORT_RANGE
    for _ in range(1000):
        port = random.randint(low, high)
        if {port - 1, port, port + 1} & _handed_out or not port_free(port):
            continue
        _handed_out.add(port)
        return port
    raise StackError(f"no free loopback port found in {low}-{high}")


def free_ports(count: int, *, pairs: int = 0) -> list[int]:
    """``count`` distinct free loopback ports; the first ``pairs`` of them have port+1 free too
    (the SMTP sink serves its HTTP API on the port after SMTP)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_port()
        needs_pair = len(chosen) < pairs
        taken = set(chosen) | {p + 1 for p in chosen[:pairs]}
        if port in taken or (needs_pair and (port + 1 in taken or not port_free(port + 1))):
            continue
        chosen.append(port)
    return chosen


def port_free(port: int) -> bool:
    """True when ``port`` can be bound on loopback right now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def port_holder(port: int) -> str | None:
    """Describe the process listening on ``port`` ("pid 123 (java ...)"), if one can be found."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    return f"pid {pid_dir.name} ({cmdline.strip()[:120]})"
        except OSError:
            continue
    return "a process this user cannot inspect"


def ensure_port_free(port: int, what: str) -> None:
    """Refuse to start ``what`` on a port something else already listens on."""
    holder = port_holder(port)
    if holder is not None or port_answers("127.0.0.1", port):
        raise StackError(
            f"cannot start {what}: port {port} is already in use by {holder or 'another process'}."
            f" Stop it, or point Herald elsewhere with the matching environment variable."
        )


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    log: Path | None = None,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll ``check`` until it is true. Raise a StackError, quoting the end of ``log``, on
    timeout, or as soon as ``alive`` says the process being waited for has exited."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise StackError(f"{what} exited while starting{log_tail(log)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise StackError(f"{what} did not come up within {timeout:.0f}s{log_tail(log)}")


def log_tail(log: Path | None, lines: int = 15) -> str:
    """``"; see LOG; its last lines:"`` and those lines, for an error message ("" without a log)."""
    if log is None:
        return ""
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"; see {log} (unreadable)"
    if not tail:
        return f"; see {log} (empty)"
    return f"; see {log}; its last lines:\n" + "\n".join(f"  {line}" for line in tail)


def read_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process is still alive."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # A killed process whose parent has not reaped it yet (e.g. a SIGKILLed postmaster, whose
    # parent is init) still answers signal 0, but it is not running.
    return pid if _alive(pid) else None


def spawn(
    argv: Sequence[str], *, pidfile: Path, log: Path, env: dict[str, str] | None = None
) -> int:
    """Start ``argv`` detached in its own session (so Ctrl-C of a parent does not hit it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    pidfile.write_text(f"{proc.pid}\n")
    return proc.pid


def terminate(pidfile: Path, what: str, timeout: float = 20.0) -> bool:
    """SIGTERM the process group in ``pidfile``, SIGKILL it after ``timeout``. True if stopped."""
    pid = read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    pidfile.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    # Reap it if it is our child, so a zombie does not look alive.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
