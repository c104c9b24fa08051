"""Bring the whole local stack up, down, and report on it."""

from __future__ import annotations

from collections.abc import Callable

from herald.devstack.components import Component, Status, components
from herald.devstack.process import StackError
from herald.settings import Settings, get_settings


def up(settings: Settings | None = None, say: Callable[[str], None] = print) -> list[str]:
    """Start every managed part that is not running; wait until each answers.

    Returns the names of the parts this call started (so a caller can stop only those).
    On failure, stops what it started and raises StackError.
    """
    started: list[str] = []
    parts = components(settings or get_settings())
    try:
        for part in parts:
            was_running = part.managed and part.owned_pid() is not None
            say(part.start())
            if part.managed and not was_running:
                started.append(part.name)
    except StackError:
        down(settings, only=started, say=say)
        raise
    return started


def down(
    settings: Settings | None = None,
    only: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Stop the managed parts (all, or the named ones), in reverse start order."""
    for part in reversed(components(settings or get_settings())):
        if only is None or part.name in only:
            say(part.stop())


def status(settings: Settings | None = None) -> list[Status]:
    return [part.status() for part in components(settings or get_settings())]


def component(name: str, settings: Settings | None = None) -> Component:
    for part in components(settings or get_settings()):
        if part.name == name:
            return part
    raise KeyError(name)
