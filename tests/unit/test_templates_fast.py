"""The fast path for substitution-only templates renders exactly what Jinja renders.

Every case goes through :func:`render` (fast path when it applies) and through
:func:`templates._render_jinja` (always Jinja): the outcome must be identical (the text, or
the PermanentError's class and message). The fast path must also actually be taken where it
applies, or the comparison would only compare Jinja with itself.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from herald import templates
from herald.errors import PermanentError
from herald.seed import DEFAULT_EVENT_TYPES
from herald.templates import MAX_OUTPUT_CHARS, generate_templates, render


def outcome(func: Any, source: str, context: Any, html: bool) -> tuple[str, str, str]:
    """("ok", type name, text) or ("error", error class, message)."""
    try:
        text = func(source, context, html=html)
    except PermanentError as exc:
        return ("error", exc.error_class, exc.message)
    return ("ok", type(text).__name__, text)


def same(source: str, context: Any, *, html: bool = False) -> tuple[str, str, str]:
    """Render both ways; the outcomes must be identical. Returns it."""
    fast = outcome(render, source, context, html)
    slow = outcome(templates._render_jinja, source, context, html)
    assert fast == slow, (source, context, html)
    return fast


def takes_fast_path(source: str, context: Any, *, html: bool = False) -> bool:
    pieces = templates._compile_fast(source, html)
    if pieces is None or type(context) is not dict:
        return False
    return templates._render_fast(pieces, context, html) is not None


SEEDED_CONTEXT: dict[str, Any] = {
    "user_id": "u-1",
    "display_name": "Zoë <admin> & \"friends\" 'n' co",
    "locale": "en",
    "event_id": "e-1",
    "event_type": "comment.created",
    "event_type_name": "New comment",
    "actor_id": "",
    "occurred_at": "2025-01-02T03:04:05+00:00",
    "post_title": "Ünïcødé & <b>bold</b> 🎉",
    "author_name": "Bob",
    "excerpt": "line one\nline two\r\n\t<script>alert('x')</script>",
    "user_agent": "Firefox",
    "ip": "203.0.113.9",
    "device_id": "dev-1",
    "count": 3,
    "plural": "s",
    "week": "2025-W01",
    "titles": "- a\n- b",
}


def seeded_sources() -> list[tuple[str, bool]]:
    sources = []
    for event_type in DEFAULT_EVENT_TYPES.values():
        for template in event_type["templates"].values():
            for field, source in template.items():
                if source:
                    sources.append((source, field == "html"))
    return sources


def test_seeded_templates_take_the_fast_path_and_match_jinja() -> None:
    sources = seeded_sources()
    assert len(sources) >= 15
    for source, html in sources:
        assert takes_fast_path(source, SEEDED_CONTEXT, html=html), source
        kind, _, text = same(source, SEEDED_CONTEXT, html=html)
        assert kind == "ok"
        if html and "{{ display_name }}" in source:
            assert "Zoë &lt;admin&gt; &amp; &#34;friends&#34; &#39;n&#39; co" in text
        # Without the values the event did not carry: the same missing_key error.
        kind, error_class, message = same(source, {"unrelated": 1}, html=html)
        if "{{" in source:
            assert (kind, error_class) == ("error", "template.missing_key")
            assert "did not carry" in message
        else:
            assert (kind, message) == ("ok", source)


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("Order shipped", ["order_id", "carrier", "eta"]),
        ("Café <déjà> & 'vu'", ["naïve", "b", "a_b_c"]),
        ("No keys", []),
    ],
)
def test_generated_templates_take_the_fast_path_and_match_jinja(name: str, keys: list[str]) -> None:
    context: dict[str, Any] = {"order_id": 17, "carrier": "<UPS>", "eta": 2.5, "naïve": None}
    context |= {"b": True, "a_b_c": "x & y"}
    for template in generate_templates(name, keys).values():
        for field, source in template.items():
            if source is None:
                continue
            html = field == "html"
            assert takes_fast_path(source, context, html=html), source
            assert same(source, context, html=html)[0] == "ok"
            if "{{" in source:
                assert same(source, {}, html=html)[1] == "template.missing_key"


NESTED = {"a": {"b": {"c": "deep <&>", "n": 7}, "items": "key named items", "l": [1, 2]}}
SCALARS: dict[str, Any] = {"i": -12, "big": 10**20, "z": 0, "t": True, "f": False, "n": None}
SCALARS |= {"r": 0.1 + 0.2, "e": 1e100, "nan": float("nan"), "inf": float("-inf"), "nz": -0.0}
SCALARS_SOURCE = " ".join(f"{{{{ {name} }}}}" for name in SCALARS)

# (source, context, html, whether the fast path renders it)
EDGE_CASES: list[tuple[str, dict[Any, Any], bool, bool]] = [
    ("", {}, False, True),
    ("plain text only", {}, False, True),
    ("  a  {{- x -}}  b  ", {"x": "X"}, False, True),
    ("a\n{{- x }}\n{{ x -}}\n  b", {"x": "X"}, False, True),
    ("{{ x }}\n", {"x": "trailing newline dropped"}, False, True),
    ("a\r\nb {{ x }}\r\n\r\n", {"x": "crlf"}, False, True),
    ("{# comment #}{{ x }}{# another #}!", {"x": 1}, False, True),
    ("{% raw %}{{ not a var }}{% endraw %}{{ x }}", {"x": "<y>"}, True, True),
    ("ünï {{ x }} 🎉", {"x": "çå 漢字 \u0000 \ud7ff"}, False, True),
    ("<p>{{ x }}</p>", {"x": "<&>\"'"}, True, True),
    ("<p>{{ x }}</p>", {"x": "<&>\"'"}, False, True),
    ("{{ a.b.c }}|{{ a['b']['c'] }}|{{ a.b['n'] }}|{{ a['items'] }}", NESTED, False, True),
    ("{{ a.b.c }}|{{ a['b'].n }}", NESTED, True, True),
    (SCALARS_SOURCE, SCALARS, False, True),
    (SCALARS_SOURCE, SCALARS, True, True),
    ("{{ x }}", {"x": "x", 1: "a key that is not a string"}, False, False),
    ("{{ x }}", {"x": "x", "self": "Template.generate's own argument"}, False, False),
    ("{{ self }}", {}, False, False),
    ("{{ range }}", {}, False, False),
    ("{{ range }}", {"range": "the context wins over globals"}, False, True),
    ("{{ missing }}", {"x": 1}, False, False),
    ("{{ x }} {{ missing }}", {"x": 1}, True, False),
    ("{{ a.missing }}", NESTED, False, False),
    ("{{ a.b.c.d }}", NESTED, False, False),
    ("{{ a['missing'] }}", NESTED, False, False),
    ("{{ a.items }}", NESTED, False, False),
    ("{{ a.l }}", NESTED, False, False),
    ("{{ a.l.count }}", NESTED, False, False),
    ("{{ a.b }}", NESTED, False, False),
    (
        "{{ o.move_to_end }}",
        {"o": OrderedDict(move_to_end="method")},
        False,
        False,
    ),
    ("{{ d.x }}", {"d": defaultdict(str, x="a dict subclass")}, False, False),
    ("{{ x }}", {"x": [1, "<b>"]}, True, False),
    ("{{ x }}", {"x": ("t",)}, False, False),
    ("{{ x }}", {"x": b"bytes"}, False, False),
    ("{{ x }}", {"x": Markup("<b>already safe</b>")}, True, False),
    ("{{ x }}", {"x": Markup("<b>already safe</b>")}, False, False),
    ("{{ x.upper }}", {"x": "s"}, False, False),
    ("{{ x }}", {"x": 10**5000}, False, False),
    ("{{ x }}", {"x": "y" * MAX_OUTPUT_CHARS}, False, True),
    ("{{ x }}!", {"x": "y" * MAX_OUTPUT_CHARS}, False, False),
    ("{{ x }}{{ x }}", {"x": "y" * (MAX_OUTPUT_CHARS // 2 + 1)}, True, False),
    ("{{ x|upper }}", {"x": "s"}, False, False),
    ("{{ 'const' }}", {}, False, False),
    ("{{ x ~ y }}", {"x": "a", "y": "b"}, False, False),
    ("{% if x %}{{ x }}{% endif %}", {"x": "a"}, False, False),
    ("{{ a[0] }}", {"a": {0: "int key"}}, False, False),
    ("{{ x", {"x": 1}, False, False),
    ("{{ x.__class__ }}", {"x": 1}, False, False),
    ("{{ x['_private'] }}", {"x": {"_private": 1}}, False, False),
]


@pytest.mark.parametrize(("source", "context", "html", "fast"), EDGE_CASES)
def test_edge_cases_match_jinja(
    source: str, context: dict[Any, Any], html: bool, fast: bool
) -> None:
    assert takes_fast_path(source, context, html=html) is fast
    same(source, context, html=html)


def test_what_is_not_substitution_only_is_never_compiled_for_the_fast_path() -> None:
    assert templates._compile_fast("a {{ x }} b {{ y.z['w'] }}", False) == (
        "a ",
        ("x", ()),
        " b ",
        ("y", ("z", "w")),
    )
    for source in (
        "{{ self }}",
        "{{ x.items }}",
        "{{ x[0] }}",
        "{{ x|e }}",
        "{{ x",
        "{% set y = 1 %}",
    ):
        assert templates._compile_fast(source, False) is None, source


def test_fallback_errors_are_jinja_errors() -> None:
    assert same("{{ x }}", {"x": "x", 1: 2})[1] == "template.error"
    assert same("{{ x }}", {"x": "x", "self": 1})[1] == "template.error"
    assert same("{{ x }}{{ x }}", {"x": "y" * (MAX_OUTPUT_CHARS // 2 + 1)})[1] == "template.limit"
    assert same("{{ a.b.c.d }}", NESTED)[1] == "template.missing_key"
    assert same("{{ x }}", {"x": 10**5000})[1] == "template.error"
    assert same("{{ x", {})[1] == "template.error"


def test_a_mapping_that_is_not_a_dict_renders_through_jinja() -> None:
    class Context(dict[str, Any]):
        pass

    assert not takes_fast_path("{{ x }}", Context(x=1))
    assert same("{{ x }}", Context(x=1)) == ("ok", "str", "1")


def test_fast_path_does_not_touch_jinja(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    jinja = templates._render_jinja

    def counting(source: str, context: Any, *, html: bool = False) -> str:
        calls.append(source)
        return jinja(source, context, html=html)

    monkeypatch.setattr(templates, "_render_jinja", counting)
    assert render("Hi {{ who.name }}", {"who": {"name": "<Ann>"}}, html=True) == "Hi &lt;Ann&gt;"
    assert calls == []
    assert render("Hi {{ who.name }}", {"who": {"name": ["Ann"]}}) == "Hi ['Ann']"
    assert calls == ["Hi {{ who.name }}"]


# Random templates: text (sometimes a fragment of Jinja's own syntax, so some do not parse or
# are not substitution-only) and lookups, some with whitespace control; random contexts over
# the same few keys (values: scalars, lists, nested dicts), so that most lookups find a value.
# The odd names (self, missing, a dict's items and keys) and syntax come one time in ten.
KEYS = ["a", "b", "c"]
PLAIN = st.text(alphabet="ab <>&\"'-}\n\r\t éü🎉", max_size=8)
SYNTAX = st.sampled_from(["{", "{{", "{%", "{#", "%}", "#}", "{% raw %}{{ a }}{% endraw %}"])


def rarely(common: st.SearchStrategy[str], rare: st.SearchStrategy[str]) -> Any:
    """``rare`` one time in ten, ``common`` otherwise."""
    return st.integers(0, 9).flatmap(lambda n: rare if n == 0 else common)


TEXT = rarely(PLAIN, SYNTAX)
LEAF = st.one_of(
    st.text(alphabet="xy<>&\"' é🎉\n", max_size=6),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)


def values(depth: int) -> Any:
    """A leaf or, below ``depth`` levels, mostly a dict holding every key (else a list)."""
    if depth == 0:
        return LEAF
    inner = values(depth - 1)
    nested = st.fixed_dictionaries(dict.fromkeys(KEYS, inner))
    return st.integers(0, 9).flatmap(
        lambda n: nested if n < 6 else LEAF if n < 9 else st.lists(inner, max_size=2)
    )


@st.composite
def expressions(draw: st.DrawFn) -> str:
    expression = draw(rarely(st.sampled_from(KEYS), st.sampled_from(["self", "missing"])))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(rarely(st.sampled_from(KEYS), st.sampled_from(["items", "keys", "missing"])))
        expression += draw(st.sampled_from([f".{key}", f"['{key}']", f'["{key}"]', f"[ '{key}' ]"]))
    left = draw(st.sampled_from(["{{ ", "{{- ", "{{"]))
    right = draw(st.sampled_from([" }}", " -}}", "}}"]))
    return left + expression + right


@given(
    parts=st.lists(st.one_of(TEXT, expressions()), max_size=6),
    context=st.fixed_dictionaries(dict.fromkeys(KEYS, values(2))),
    html=st.booleans(),
)
@settings(
    max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
def test_random_templates_match_jinja(
    parts: list[str], context: dict[str, Any], html: bool
) -> None:
    same("".join(parts), context, html=html)
