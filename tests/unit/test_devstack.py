"""Pure helpers of the local stack (no processes started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald.devstack.components import new_cluster_id, valid_cluster_id


def test_new_cluster_ids_never_start_with_a_dash() -> None:
    # One uuid in 64 encodes to a leading '-'; kafka-storage would read it as an option.
    ids = {new_cluster_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(valid_cluster_id(value) for value in ids)
    assert not any(value.startswith("-") for value in ids)


@pytest.mark.parametrize(
    "value, valid",
    [
        ("MkU3OEVBNTcwNTJENDM2Qk", True),
        ("-kU3OEVBNTcwNTJENDM2Qk", False),
        ("short", False),
        ("", False),
    ],
)
def test_valid_cluster_id(value: str, valid: bool) -> None:
    assert valid_cluster_id(value) is valid


def test_a_stored_bad_cluster_id_is_replaced(tmp_path: Path) -> None:
    from herald.devstack.components import Kafka
    from herald.settings import get_settings

    kafka = Kafka(get_settings())
    kafka.dir = tmp_path
    (tmp_path / "cluster.id").write_text("-kU3OEVBNTcwNTJENDM2Qk")
    fresh = kafka._cluster_id()
    assert valid_cluster_id(fresh)
    assert (tmp_path / "cluster.id").read_text() == fresh


def test_free_ports_avoid_the_ephemeral_range_and_each_other() -> None:
    from herald.devstack.process import FREE_PORT_RANGE, free_port

    ports = [free_port() for _ in range(200)]
    low, high = FREE_PORT_RANGE
    assert all(low <= port <= high for port in ports)
    # Never the same port twice, nor a port next to one handed out (an SMTP sink's API).
    assert len(set(ports)) == len(ports)
    assert not {port + 1 for port in ports} & set(ports)


def test_a_stand_in_that_exits_while_starting_fails_at_once_quoting_its_log(
    tmp_path: Path,
) -> None:
    import sys
    import time

    from herald.devstack.process import StackError, read_pid, spawn, wait_until

    pidfile, log = tmp_path / "x.pid", tmp_path / "x.log"
    spawn(
        [sys.executable, "-c", "import sys; print('OSError: address already in use'); sys.exit(1)"],
        pidfile=pidfile,
        log=log,
    )
    began = time.monotonic()
    with pytest.raises(StackError) as raised:
        wait_until(lambda: False, 30.0, "x", log, alive=lambda: read_pid(pidfile) is not None)
    assert time.monotonic() - began < 10
    assert "x exited while starting" in str(raised.value)
    assert "OSError: address already in use" in str(raised.value)


def test_a_start_timeout_quotes_the_end_of_the_log(tmp_path: Path) -> None:
    from herald.devstack.process import StackError, wait_until

    log = tmp_path / "x.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))
    with pytest.raises(StackError) as raised:
        wait_until(lambda: False, 0.2, "x", log)
    message = str(raised.value)
    assert "did not come up within 0s" in message
    assert "line 99" in message and "line 85" in message and "line 84" not in message
