"""Templates are compiled when saved and rendered under limits (herald/templates.py)."""

from __future__ import annotations

import re
import time

import pytest

from herald import templates
from herald.errors import PermanentError
from herald.seed import DEFAULT_EVENT_TYPES
from herald.templates import MAX_CALLS, MAX_ITERATIONS, MAX_OUTPUT_CHARS, render, validate


def limit_error(source: str, **context: str) -> str:
    """Render ``source``; it must fail fast with template.limit; return the message."""
    started = time.monotonic()
    with pytest.raises(PermanentError) as caught:
        render(source, context)
    assert caught.value.error_class == "template.limit", caught.value.message
    assert time.monotonic() - started < templates.MAX_RENDER_SECONDS + 0.5
    return caught.value.message


def test_nested_loops_fail_fast_on_the_iteration_limit() -> None:
    nested = "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"
    assert "range() of 100000 numbers" in limit_error(nested)
    reused = "{% set r = range(200) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}"
    assert f"more than {MAX_ITERATIONS} iterations" in limit_error(reused)
    over_context = "{% for c in text %}{% for d in text %}{% endfor %}{% endfor %}"
    assert "iterations" in limit_error(over_context, text="x" * 1000)
    fine = "{% for a in range(50) %}{% for b in range(50) %}.{% endfor %}{% endfor %}"
    assert render(fine, {}) == "." * 2500


def test_values_too_large_are_refused_before_they_are_built() -> None:
    assert "1000000000 long" in limit_error("{{ 'x' * 10**9 }}")
    assert "long" in limit_error("{{ [1] * 10**8 }}")
    assert "bits" in limit_error("{{ 10**100000 }}")
    assert "formatted field" in limit_error("{{ '%999999999d' % 1 }}")
    assert "formatted field" in limit_error("{{ '%999999999d'|format(1) }}")
    assert "centered" in limit_error("{{ 'x'|center(1000000000) }}")
    assert "indented" in limit_error("{{ text|indent(100000) }}", text="a\n" * 10_000)
    assert "join" in limit_error("{{ range(10000)|join('y' * 1000) }}")
    assert "replaced" in limit_error("{{ text|replace('', 'b' * 10000) }}", text="a" * 1000)
    assert "numbers passed to calls" in limit_error("{{ (1).to_bytes(10**9, 'big') }}")
    doubling = (
        "{% set ns = namespace(x='ab') %}"
        "{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}"
    )
    assert "concatenation" in limit_error(doubling)
    adding = doubling.replace("ns.x ~ ns.x", "ns.x + ns.x")
    assert "sum" in limit_error(adding)


def test_output_size_is_limited() -> None:
    many = "{% for i in range(5000) %}{{ 'y' * 300 }}{% endfor %}"
    assert f"the limit is {MAX_OUTPUT_CHARS}" in limit_error(many)
    assert len(render("{{ 'y' * 1000 }}", {})) == 1000


def test_calls_and_recursion_are_limited() -> None:
    doubling = (
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}"
    )
    assert f"more than {MAX_CALLS} calls" in limit_error(doubling)
    assert "recursion" in limit_error("{% macro f(n) %}{{ f(n+1) }}{% endmacro %}{{ f(0) }}")


def test_time_is_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4,000 iterations of two calls stay under the call and iteration limits, so only the clock
    # can stop this render; the limit is lowered so that no machine is fast enough to finish
    # 40 million additions in time (with the real 1 s, which limit trips first was a race).
    monkeypatch.setattr(templates, "MAX_RENDER_SECONDS", 0.02)
    slow = "{% for i in range(4000) %}{{ range(10000)|sum }}{% endfor %}"
    assert "longer than 0.02 s" in limit_error(slow)


def test_amplifying_methods_and_mutation_are_not_callable() -> None:
    for source in (
        "{{ 'x'.ljust(10) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ ','.join(['a']) }}",
        "{% set l = [] %}{{ l.append(1) }}",
    ):
        with pytest.raises(PermanentError) as caught:
            render(source, {})
        assert caught.value.error_class == "template.error"


def test_ordinary_templates_render_as_before() -> None:
    context = {"name": "Ann", "items": "a,b", "x": "<i>"}
    source = (
        "Hi {{ name }} {% for x in items.split(',') %}[{{ x|upper }}]{% endfor %} "
        "{{ 'a' ~ name }} {{ '%3d'|format(7) }} {{ [1, 2]|join(',') }} {{ name|center(7) }}"
    )
    assert render(source, context) == "Hi Ann [A][B] aAnn   7 1,2   Ann  "
    assert render("<b>{{ x }}</b>{{ x ~ '<' }}", context, html=True) == (
        "<b>&lt;i&gt;</b>&lt;i&gt;&lt;"
    )
    recursive = (
        "{% for x in [[1, [2]]] recursive %}"
        "{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}{% endfor %}"
    )
    assert render(recursive, {}) == "12"
    with pytest.raises(PermanentError) as caught:
        render("{{ 1 / 0 }}", {})
    assert caught.value.error_class == "template.error"


def test_validate_compiles_and_refuses_what_cannot_render() -> None:
    validate("{{ name|upper }} {% for x in range(3) %}{{ x }}{% endfor %}")
    for source, reason in (
        ("{{ name", "unexpected end of template"),
        ("{{ name|no_such_filter }}", "No filter named 'no_such_filter'"),
        ("{% include 'other.txt' %}", "'include' is not allowed"),
        ("{% extends 'base.txt' %}", "'extends' is not allowed"),
        ("{% import 'macros.txt' as m %}", "'import' is not allowed"),
        ("{% from 'macros.txt' import m %}", "'from ... import' is not allowed"),
    ):
        with pytest.raises(ValueError, match=reason):
            validate(source)


def test_the_default_event_types_compile() -> None:
    for event_type in DEFAULT_EVENT_TYPES.values():
        for template in (event_type.get("templates") or {}).values():
            for source in template.values():
                if source:
                    validate(source)


def test_validate_refuses_private_names_constant_bombs_and_huge_sources() -> None:
    for source, reason in (
        ("{{ ''.__class__.__mro__ }}", "'__class__': names starting with '_'"),
        ("{{ cycler.__init__.__globals__ }}", "'__init__': names starting with '_'"),
        ("{{ name['_secret'] }}", "'_secret'"),
        ("{{ name|attr('__class__') }}", "'__class__'"),
        ("{{ 'x' * 10**9 }}", "1000000000 long"),
        ("{{ ('ab' * 1000) * (1000 + 1) }}", "2002000 long"),
        ("{{ 10**100000 }}", "bits"),
        ("{{ '%999999999d' % 1 }}", "formatted field"),
        ("{% for a in range(100000) %}{% for b in range(9) %}{% endfor %}{% endfor %}", "range()"),
        ("{{ range(0, -20000, -1)|list }}", "range() of 20000 numbers"),
        ("x" * (templates.MAX_SOURCE_CHARS + 1), f"at most {templates.MAX_SOURCE_CHARS}"),
    ):
        with pytest.raises(ValueError, match=re.escape(reason)):
            validate(source)
    # Nested past Python's limits on the code Jinja generates: refused, not a crash.
    for source in (
        "{% for a in x %}" * 30 + "{% endfor %}" * 30,
        "{% if x %}" * 100 + "{% endif %}" * 100,
        "{{ " + "(" * 200 + "1" + ")" * 200 + " }}",
        "{{ " + "1 + " * 1000 + "1 }}",
        "{{ x" + "|upper" * 2000 + " }}",
    ):
        with pytest.raises(ValueError, match="nested too deeply to compile"):
            validate(source)
        with pytest.raises(PermanentError) as caught:
            render(source, {"x": "a"})
        assert caught.value.error_class in ("template.error", "template.limit")
    # What depends on the context is left to the render's limits.
    validate("{{ 'x' * (n|int) }} {% for a in range(n|int) %}{% endfor %} {{ x|attr(name) }}")
    for source in ("{{ 'x' * 999 }}", "{{ range(1, 2, 0) }}", "{{ 1 % 0 }}", "{{ 2 ** 0.5 }}"):
        validate(source)
    assert render("{{ n|int|attr('real') }} {{ -2 ** 2 }} {{ 'ab' * 2 }}", {"n": "7"}) == (
        "7 4 abab"
    )
    with pytest.raises(PermanentError) as caught:
        render("{{ x|attr(name) }}", {"x": "s", "name": "__class__"})
    assert caught.value.error_class == "template.error"
