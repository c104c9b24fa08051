"""Notification templates: sandboxed rendering, and sensible defaults for new event types.

Templates come from the event-type registry, never from the event payload; context values are
data only. Jinja2's sandbox forbids attribute tricks (``{{ ''.__class__ }}``) in templates, and
autoescaping protects the HTML part; a context value is never itself evaluated as a template.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from herald.errors import PermanentError

CHANNELS = ("inapp", "email", "sms")

_TEXT = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_HTML = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


@lru_cache(maxsize=4096)
def _compile(source: str, html: bool) -> Any:
    return (_HTML if html else _TEXT).from_string(source)


def render(source: str, context: Mapping[str, Any], *, html: bool = False) -> str:
    """Render one template with ``context``; a missing key or a bad template is permanent."""
    try:
        return str(_compile(source, html).render(**context))
    except UndefinedError as exc:
        raise PermanentError(
            f"template needs a value the event did not carry: {exc.message}",
            error_class="template.missing_key",
        ) from None
    except TemplateError as exc:
        raise PermanentError(f"template error: {exc}", error_class="template.error") from None


def validate(source: str) -> None:
    """Raise ValueError when ``source`` is not a valid template (used by the admin API)."""
    try:
        _TEXT.parse(source)
    except TemplateError as exc:
        raise ValueError(f"invalid template: {exc}") from None


def generate_templates(
    name: str, context_keys: Iterable[str], channels: Iterable[str] = CHANNELS
) -> dict[str, dict[str, str | None]]:
    """Default templates for an event type created without any: its name as the title, and
    each context key listed as ``key: {{ key }}`` in the body."""
    keys = sorted(dict.fromkeys(k for k in context_keys if k.isidentifier()))
    lines = [f"{key.replace('_', ' ').capitalize()}: {{{{ {key} }}}}" for key in keys]
    body = "\n".join(lines) if lines else name
    sms = f"{name}: " + ", ".join(f"{{{{ {key} }}}}" for key in keys) if keys else name
    html_items = "".join(f"<li>{line}</li>" for line in lines)
    out: dict[str, dict[str, str | None]] = {}
    for channel in channels:
        if channel == "email":
            html = f"<h1>{name}</h1><ul>{html_items}</ul>" if keys else f"<p>{name}</p>"
            out[channel] = {"title": name, "body": body, "html": html}
        elif channel == "sms":
            out[channel] = {"title": name, "body": sms, "html": None}
        else:
            out[channel] = {"title": name, "body": body, "html": None}
    return out
