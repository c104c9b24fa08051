"""``Supervisor``: a service that exits is started again, with a growing pause."""

from __future__ import annotations

from pathlib import Path

from herald.supervisor import Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_exiting_service_is_restarted_with_a_doubling_pause_reset_when_stable(
    tmp_path: Path,
) -> None:
    clock = Clock()
    said: list[str] = []
    supervisor = Supervisor(tmp_path, said.append, maximum=4.0, stable_after=60.0, clock=clock)
    # A module that exits at once (status 0): stands in for a crashing service.
    first = supervisor.start("this")
    first.proc.wait(10)
    pauses = []
    for _ in range(4):
        supervisor.check()  # notices the exit, schedules the restart
        pauses.append(float(said[-1].split("restarting in ")[1].split(" s")[0]))
        supervisor.check()  # not due yet: nothing restarted
        assert supervisor.services[0].proc.returncode is not None
        clock.now += pauses[-1]
        supervisor.check()  # due: started again
        assert "restarted" in said[-1]
        supervisor.services[0].proc.wait(10)
    assert pauses == [1.0, 2.0, 4.0, 4.0]  # doubling, capped at the maximum
    assert supervisor.restarts == 4
    # It stayed up longer than stable_after before this exit: back to the first pause.
    clock.now += 61
    supervisor.check()
    assert "restarting in 1 s" in said[-1]
    supervisor.stop()
    assert supervisor.services == []
