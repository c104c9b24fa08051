"""The Faust internals the router relies on, pinned so an upgrade that moves them fails here
rather than in the login-alert scenario."""

from __future__ import annotations

from typing import Any

from faust import streams as faust_streams

from services.router.agents import _current


class FakeEvent:
    """Only identity matters: Faust keeps a weak reference to the current event."""

    message: Any = None


def test_current_makes_the_event_fausts_current_event_and_restores_the_previous() -> None:
    outer, inner = FakeEvent(), FakeEvent()
    assert faust_streams.current_event() is None
    with _current(outer):  # type: ignore[arg-type]
        assert faust_streams.current_event() is outer
        with _current(inner):  # type: ignore[arg-type]
            assert faust_streams.current_event() is inner
        assert faust_streams.current_event() is outer
    assert faust_streams.current_event() is None
