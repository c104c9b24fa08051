"""Microbenchmark of :func:`herald.templates.render` on seeded templates (issue 10, router CPU).

``python -m bench.templates`` prints µs per render (best of ``--repeat`` timeit runs) for a
few seeded templates with a context shaped like the router's (its built-ins plus the event's
context), through :func:`render` and, when the module has one, through the Jinja path alone
(``_render_jinja``, which the fast path for substitution-only templates falls back to).
"""

from __future__ import annotations

import argparse
import functools
import timeit
from collections.abc import Callable
from typing import Any

from herald import templates
from herald.seed import COMMENT_CREATED, DEFAULT_EVENT_TYPES, LOGIN_ALERT, USER_REGISTERED

CONTEXT: dict[str, Any] = {
    "user_id": "u-000042",
    "display_name": "Ada Lovelace",
    "locale": "en",
    "event_id": "0b9f6a52-3c1e-4a57-9d7e-0c1f9b8e2a11",
    "event_type": COMMENT_CREATED,
    "event_type_name": "New comment",
    "actor_id": "u-000007",
    "occurred_at": "2025-01-02T03:04:05+00:00",
    "post_title": "Notes on the Analytical Engine",
    "author_name": "Charles Babbage",
    "excerpt": "The engine <weaves> algebraic patterns & so on.",
    "user_agent": "Firefox 128 on Linux",
    "ip": "203.0.113.9",
    "device_id": "dev-77",
}


def _seeded(code: str, channel: str, field: str) -> str:
    return str(DEFAULT_EVENT_TYPES[code]["templates"][channel][field])


CASES: list[tuple[str, str, bool]] = [
    ("user.registered inapp title", _seeded(USER_REGISTERED, "inapp", "title"), False),
    ("comment.created email body", _seeded(COMMENT_CREATED, "email", "body"), False),
    ("comment.created email html", _seeded(COMMENT_CREATED, "email", "html"), True),
    ("security.login_alert email body", _seeded(LOGIN_ALERT, "email", "body"), False),
]


def per_render_us(func: Callable[[], Any], number: int, repeat: int) -> float:
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="renders per timing run")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs (the best counts)")
    args = parser.parse_args()
    jinja: Callable[..., str] | None = getattr(templates, "_render_jinja", None)
    print(f"{'template':34} {'render() µs':>12} {'Jinja only µs':>14}")
    for label, source, html in CASES:
        assert templates.render(source, CONTEXT, html=html)  # compiled and cached first
        fast = per_render_us(
            functools.partial(templates.render, source, CONTEXT, html=html),
            args.number,
            args.repeat,
        )
        slow = "-"
        if jinja is not None:
            assert jinja(source, CONTEXT, html=html) == templates.render(source, CONTEXT, html=html)
            slow = "{:.2f}".format(
                per_render_us(
                    functools.partial(jinja, source, CONTEXT, html=html), args.number, args.repeat
                )
            )
        print(f"{label:34} {fast:12.2f} {slow:>14}")


if __name__ == "__main__":
    main()
