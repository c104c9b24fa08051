"""Notification templates: sandboxed rendering under limits, and defaults for new event types.

Templates come from the event-type registry, never from the event payload; context values are
data only. Jinja2's sandbox forbids attribute tricks (``{{ ''.__class__ }}``) in templates, and
autoescaping protects the HTML part; a context value is never itself evaluated as a template.

A template is compiled when its event type is saved (:func:`validate`), which refuses a syntax
error, an unknown filter or test, ``extends``/``include``/``import``, a name starting with
``_`` after a dot, in a subscript or in ``|attr`` (``{{ ''.__class__ }}``: the sandbox refuses
those when rendering anyway), a source longer than :data:`MAX_SOURCE_CHARS`, a constant
expression past a limit below (``{{ 'x' * 10**9 }}``, ``range(100000)``), and nesting deeper
than Python can compile (20 nested blocks, the recursion limit). Every render is bounded too
(a context value can make ``{{ 'x' * (n|int) }}`` huge), so that one event type cannot stall
or exhaust the router:

=========================  ===============================================================
:data:`MAX_OUTPUT_CHARS`   characters one render may produce, and the longest string or list
                           an operator or filter may build on the way (``'x' * 10**9`` is
                           refused before it is built)
:data:`MAX_ITERATIONS`     loop iterations per render, all loops together, and the
                           longest ``range()`` (nested ``range(100000)`` loops fail at once)
:data:`MAX_CALLS`          calls (functions, methods, macros, ``loop()``) per render
:data:`MAX_RENDER_SECONDS` wall-clock time per render, checked at every iteration, call and
                           output chunk
=========================  ===============================================================

Past a limit, :func:`render` raises :class:`PermanentError` with error class
``template.limit`` (the router dead-letters the record). The sandbox is the immutable one (no
``append``/``update`` on lists and dicts), string methods that pad or repeat (``center``,
``ljust``, ``zfill``, ``replace``, ``join``, ``format``...) are not callable (their filters
are, with the limits above), ints are bounded to :data:`MAX_INT_BITS` bits in ``*`` and
``**``, and only ``range``, ``dict``, ``namespace``, ``cycler`` and ``joiner`` are global.

Most templates only substitute values (``Hi {{ display_name }}``, ``{{ post.title }}``), and
those skip the Jinja machinery (issue 10: rendering was about 6 % of the router's CPU). A
template whose parsed tree (the same parse, so whitespace control and the checks above apply)
is only text and ``{{ name }}`` lookups, optionally followed by ``.key`` or ``['key']`` steps,
is compiled once into text pieces and lookups (:func:`_compile_fast`), and :func:`render` joins
them (:func:`_render_fast`) when each step finds its key in a plain ``dict`` (``.items`` is
the dict's method, so Jinja decides that one) and each value is a ``str``, ``int``,
``float``, ``bool`` or ``None``: printed with ``str()`` as Jinja prints them, strings given
``markupsafe.escape``'s replacements in HTML. Anything else (a missing key, a list, an output
past :data:`MAX_OUTPUT_CHARS`, a context Jinja would refuse) renders through Jinja
(:func:`_render_jinja`), which returns or raises what it always did: the fast path only ever
returns what Jinja would return (``tests/unit/test_templates_fast.py`` compares the two).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, Final

from jinja2 import StrictUndefined, TemplateError, UndefinedError, nodes
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Cycler, Joiner, Namespace, pass_eval_context
from jinja2.visitor import NodeTransformer

from herald.channels import CHANNELS
from herald.errors import PermanentError

#: Characters one render may produce (and the longest value built while rendering).
MAX_OUTPUT_CHARS: Final = 1_000_000
#: Loop iterations per render, all loops together; also the longest ``range()``.
MAX_ITERATIONS: Final = 10_000
#: Calls (functions, methods, macros) per render.
MAX_CALLS: Final = 10_000
#: Wall-clock seconds per render.
MAX_RENDER_SECONDS: Final = 1.0
#: Largest integer (in bits) ``*`` and ``**`` may make.
MAX_INT_BITS: Final = 4096
#: Longest template source. Gmail clips an email past 102 KB; a template longer than this
#: makes messages nobody reads whole (the seeded ones are under 300 characters).
MAX_SOURCE_CHARS: Final = 100_000

#: Template constructs refused when an event type is saved: they need a template loader.
_FORBIDDEN: Final = {
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
}
#: String methods that pad, repeat or join: unbounded output from small inputs.
_AMPLIFYING_STR_METHODS: Final = frozenset(
    {
        "center",
        "ljust",
        "rjust",
        "zfill",
        "expandtabs",
        "replace",
        "join",
        "format",
        "format_map",
        "translate",
        "maketrans",
    }
)
# A printf-style conversion's width and precision (``%-10.3s``, ``%(name)*d``).
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


class TemplateLimitError(Exception):
    """A render went past one of this module's limits."""


class _Budget:
    """What one render has used so far."""

    __slots__ = ("calls", "deadline", "iterations")

    def __init__(self) -> None:
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS
        self.iterations = 0
        self.calls = 0

    def iterate(self, count: int = 1) -> None:
        self.iterations += count
        if self.iterations > MAX_ITERATIONS:
            raise TemplateLimitError(f"loops ran more than {MAX_ITERATIONS} iterations")
        self.check_time()

    def call(self) -> None:
        self.calls += 1
        if self.calls > MAX_CALLS:
            raise TemplateLimitError(f"more than {MAX_CALLS} calls")
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"rendering took longer than {MAX_RENDER_SECONDS} s")


_BUDGET: ContextVar[_Budget | None] = ContextVar("herald_template_budget", default=None)


def _budget() -> _Budget:
    # Outside render() (a template rendered directly): a fresh budget per check still bounds
    # each loop and value, only not the render as a whole.
    return _BUDGET.get() or _Budget()


def _check_size(size: int, what: str) -> None:
    if size > MAX_OUTPUT_CHARS:
        raise TemplateLimitError(f"{what} would be {size} long; the limit is {MAX_OUTPUT_CHARS}")


def _check_int_bits(bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateLimitError(
            f"{what} would have about {bits} bits; the limit is {MAX_INT_BITS}"
        )


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sized) and not isinstance(value, int | float | Mapping)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be too large, before it is computed."""
    both_int = isinstance(left, int) and isinstance(right, int)
    if operator == "*":
        if both_int:
            _check_int_bits(left.bit_length() + right.bit_length(), "a product")
        elif _is_sequence(left) and isinstance(right, int):
            _check_size(len(left) * right, "a repeated value")
        elif _is_sequence(right) and isinstance(left, int):
            _check_size(len(right) * left, "a repeated value")
    elif operator == "**":
        if both_int and right > 0 and abs(left) > 1:
            _check_int_bits(math.ceil(right * math.log2(abs(left))), "a power")
    elif operator == "+":
        if _is_sequence(left) and _is_sequence(right):
            _check_size(len(left) + len(right), "a sum")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left, right)


def _check_percent_format(template: str, args: Any) -> None:
    """Refuse a ``%`` format whose widths or precisions would make a huge string."""
    star = False
    for match in _PERCENT_SPEC.finditer(template):
        for group in match.groups():
            if group == "*":
                star = True
            elif group is not None:
                _check_size(int(group), "a formatted field")
    if star:
        values = args if isinstance(args, tuple) else (args,)
        for value in values:
            if isinstance(value, int):
                _check_size(abs(value), "a formatted field")


def _check_call_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse a call given a size beyond the output limit (``(1).to_bytes(10**9)``)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and abs(value) > MAX_OUTPUT_CHARS:
            raise TemplateLimitError(
                f"a call was given the number {value}; numbers passed to calls are limited to "
                f"{MAX_OUTPUT_CHARS}"
            )


def _bounded_range(*args: int) -> range:
    """``range`` of at most :data:`MAX_ITERATIONS` numbers (Jinja's own allows 100,000)."""
    numbers = range(*args)
    if len(numbers) > MAX_ITERATIONS:
        raise TemplateLimitError(
            f"range() of {len(numbers)} numbers; the limit is {MAX_ITERATIONS}"
        )
    return numbers


def _loop(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every ``for`` loop's iterable goes through this (see :class:`_Limits`)."""
    budget = _budget()
    for item in iterable:
        budget.iterate()
        yield item


@pass_eval_context
def _concat(eval_ctx: Any, values: list[Any]) -> str:
    """The ``~`` operator, bounded: what Jinja's own code would call, after a size check."""
    parts = [str(value) for value in values]
    _check_size(sum(len(part) for part in parts), "a concatenation")
    return str((markup_join if eval_ctx.autoescape else str_join)(values))


def _sizes(filter_name: str, bound: inspect.BoundArguments) -> None:
    """Refuse a filter call whose output or work would exceed the limits, before it runs."""
    args = bound.arguments
    if filter_name == "center":
        _check_size(int(args.get("width", 80)), "a centered value")
    elif filter_name == "indent":
        text, width = str(args["s"]), args.get("width", 4)
        prefix = width if isinstance(width, int) else len(str(width))
        _check_size(prefix, "an indent")
        _check_size(len(text) + (text.count("\n") + 1) * prefix, "an indented value")
    elif filter_name == "replace":
        text, old, new = str(args["s"]), str(args["old"]), str(args["new"])
        occurrences = len(text) + 1 if old == "" else text.count(old)
        count = args.get("count")
        if isinstance(count, int) and count >= 0:
            occurrences = min(occurrences, count)
        _check_size(len(text) + occurrences * len(new), "a replaced value")
    elif filter_name == "wordwrap":
        text, width = str(args["s"]), args.get("width", 79)
        wrap = args.get("wrapstring") or "\n"
        _check_size(len(text) + (len(text) // max(int(width), 1) + 1) * len(wrap), "a wrap")
    elif filter_name == "format":
        _check_percent_format(str(args["value"]), tuple(args.get("args", ())))
    elif filter_name == "tojson":
        indent = args.get("indent")
        width = indent if isinstance(indent, int) else len(str(indent or ""))
        if width > 64:  # every nested line repeats it: no useful JSON needs more
            raise TemplateLimitError("tojson's indent is limited to 64")
    elif filter_name in ("batch", "slice"):
        count = args.get("linecount", args.get("slices", 1))
        if int(count) > MAX_ITERATIONS:
            raise TemplateLimitError(f"{filter_name} is limited to {MAX_ITERATIONS} items")


def _limited_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a Jinja filter) with a size check before (for the amplifying ones) and after."""
    signature = inspect.signature(func) if name in _PRECHECKED_FILTERS else None

    @functools.wraps(func)  # keeps jinja_pass_arg: Jinja passes the same first arguments
    def limited(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.check_time()
        if signature is not None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if name == "join":  # materialize once: the size check and the join read it
                items = list(bound.arguments["value"])
                _check_size(len(str(bound.arguments["d"])) * max(len(items) - 1, 0), "a join")
                bound.arguments["value"] = items
                args, kwargs = bound.args, bound.kwargs
            else:
                _sizes(name, bound)
        result = func(*args, **kwargs)
        if isinstance(result, str):
            _check_size(len(result), f"the output of |{name}")
        return result

    return limited


_PRECHECKED_FILTERS: Final = frozenset(
    {"center", "indent", "replace", "wordwrap", "format", "tojson", "batch", "slice", "join"}
)


#: Operators whose constant operands are evaluated (and checked) when a template is compiled.
_CONSTANT_OPERATORS: Final[dict[type[nodes.Node], tuple[str, Callable[[Any, Any], Any]]]] = {
    nodes.Mul: ("*", lambda a, b: a * b),
    nodes.Pow: ("**", lambda a, b: a**b),
    nodes.Add: ("+", lambda a, b: a + b),
    nodes.Mod: ("%", lambda a, b: a % b),
}
_UNKNOWN: Final = object()


def _constant(node: nodes.Node, seen: set[int]) -> Any:
    """The value of a constant expression (literals combined by ``*``, ``**``, ``+``, ``%``
    and ``-``), each step checked against the limits as rendering would check it
    (:class:`TemplateLimitError`); :data:`_UNKNOWN` for anything depending on the context.
    Adds the operator nodes it evaluated to ``seen`` (each is evaluated once)."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.Neg):
        value = _constant(node.node, seen)
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return -value if is_number else _UNKNOWN
    operator = _CONSTANT_OPERATORS.get(type(node))
    if operator is None:
        return _UNKNOWN
    assert isinstance(node, nodes.BinExpr)
    seen.add(id(node))
    left, right = _constant(node.left, seen), _constant(node.right, seen)
    if left is _UNKNOWN or right is _UNKNOWN:
        return _UNKNOWN
    symbol, apply = operator
    _check_binop(symbol, left, right)
    try:
        return apply(left, right)
    except Exception:  # the render would fail on it too (1 % 0, 10.0 ** 999): not a limit
        return _UNKNOWN


def _refuse_private(name: object, node: nodes.Node) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise TemplateForbiddenError(
            f"{name!r}: names starting with '_' are not allowed in notification templates "
            f"(line {node.lineno})"
        )


class _Guard(NodeTransformer):
    """Rewrites a parsed template: every ``for`` loop iterates through :func:`_loop`, every
    ``~`` goes through :func:`_concat`; refuses the constructs of :data:`_FORBIDDEN`, private
    names (``x.__class__``, ``x['_y']``, ``x|attr('_z')``) and constant expressions past a
    limit (:func:`_constant`, ``range()`` of constant bounds)."""

    def __init__(self) -> None:
        self._evaluated: set[int] = set()  # operator nodes _constant has checked

    def generic_visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        for kind, name in _FORBIDDEN.items():
            if isinstance(node, kind):
                raise TemplateForbiddenError(
                    f"'{name}' is not allowed in notification templates (line {node.lineno})"
                )
        if type(node) in _CONSTANT_OPERATORS and id(node) not in self._evaluated:
            _constant(node, self._evaluated)
        return super().generic_visit(node, *args, **kwargs)

    # The visitors below look at a node's children first: ''.__class__.__mro__ is refused
    # for its first private name.

    def visit_Getattr(self, node: nodes.Getattr) -> nodes.Node:
        self.generic_visit(node)
        _refuse_private(node.attr, node)
        return node

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        if isinstance(node.arg, nodes.Const):
            _refuse_private(node.arg.value, node)
        return node

    def visit_Filter(self, node: nodes.Filter) -> nodes.Node:
        self.generic_visit(node)
        if node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const):
            _refuse_private(node.args[0].value, node)
        return node

    def visit_Call(self, node: nodes.Call) -> nodes.Node:
        self.generic_visit(node)
        # range() with constant bounds: refused now rather than at every render.
        is_range = isinstance(node.node, nodes.Name) and node.node.name == "range"
        if is_range and not (node.kwargs or node.dyn_args or node.dyn_kwargs):
            bounds = [_constant(arg, self._evaluated) for arg in node.args]
            if bounds and all(type(value) is int for value in bounds):
                try:
                    numbers = range(*bounds)
                except (TypeError, ValueError):  # range(1, 2, 3, 4), range(1, 2, 0)
                    pass
                else:
                    if len(numbers) > MAX_ITERATIONS:
                        _bounded_range(*bounds)
        return node

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_herald_loop", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        values = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(values, "_herald_concat", [], [], None, None, lineno=node.lineno)


class TemplateForbiddenError(TemplateError):
    """The template uses a construct notification templates may not use."""


class _Limits(ImmutableSandboxedEnvironment):
    """The sandbox, with this module's limits."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=autoescape)
        self.globals = {
            "range": _bounded_range,
            "dict": dict,
            "namespace": Namespace,
            "cycler": Cycler,
            "joiner": Joiner,
        }
        self.filters = {name: _limited_filter(name, f) for name, f in self.filters.items()}
        self.filters["_herald_loop"] = _loop
        self.filters["_herald_concat"] = _concat

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        guarded = _Guard().visit(tree)
        assert isinstance(guarded, nodes.Template)
        return guarded

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # The sandbox hands out str.format before is_safe_attribute is asked; its field widths
        # ('{:>999999999}') are unbounded, and the format filter does the same job, bounded.
        if super().wrap_str_format(value) is None:
            return None

        def refused(*args: Any, **kwargs: Any) -> str:
            raise SecurityError("str.format is not allowed in templates; use the format filter")

        return refused

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in _AMPLIFYING_STR_METHODS:
            return False
        return bool(super().is_safe_attribute(obj, attr, value))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().call()
        _check_call_args(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)


_TEXT = _Limits(autoescape=False)
_HTML = _Limits(autoescape=True)


@lru_cache(maxsize=4096)
def _compile(source: str, html: bool) -> Any:
    return (_HTML if html else _TEXT).from_string(source)


#: A piece of a substitution-only template: literal text, or a variable name and the keys
#: looked up in turn under it (``{{ a.b['c'] }}`` is ``("a", ("b", "c"))``).
_Piece = str | tuple[str, tuple[str, ...]]
#: ``{{ a.items }}`` on a dict is its method (the sandbox tries the attribute first).
_DICT_ATTRIBUTES: Final = frozenset(dir(dict))
#: Value types besides ``str`` the fast path prints: Jinja prints them with ``str()`` (in HTML,
#: ``escape()``, which leaves their text as it is).
_PRINTABLE: Final = frozenset({int, float, bool, type(None)})
_MISSING: Final = object()


def _lookup(node: nodes.Node) -> tuple[str, tuple[str, ...]] | None:
    """``node`` as a name and its constant string keys, or None if it is anything else."""
    keys: list[str] = []
    while True:
        if type(node) is nodes.Getattr and node.attr not in _DICT_ATTRIBUTES:
            keys.append(node.attr)
            node = node.node
        elif (
            type(node) is nodes.Getitem
            and type(node.arg) is nodes.Const
            and type(node.arg.value) is str
        ):
            keys.append(node.arg.value)
            node = node.node
        elif type(node) is nodes.Name and node.ctx == "load" and node.name != "self":
            # {{ self }} is Jinja's reference to the template, not a context value.
            return node.name, tuple(reversed(keys))
        else:
            return None


@lru_cache(maxsize=4096)
def _compile_fast(source: str, html: bool) -> tuple[_Piece, ...] | None:
    """The pieces of a template that only substitutes values; None for any other template
    (and for one that does not compile: the Jinja path raises its error)."""
    try:
        tree = (_HTML if html else _TEXT).parse(source)
    except Exception:
        return None
    pieces: list[_Piece] = []
    for output in tree.body:
        if type(output) is not nodes.Output:
            return None
        for child in output.nodes:
            if type(child) is nodes.TemplateData:
                if pieces and type(pieces[-1]) is str:
                    pieces[-1] += child.data
                else:
                    pieces.append(child.data)
            else:
                lookup = _lookup(child)
                if lookup is None:
                    return None
                pieces.append(lookup)
    return tuple(pieces)


def _render_fast(pieces: tuple[_Piece, ...], context: dict[str, Any], html: bool) -> str | None:
    """The text Jinja would render from ``pieces``; None when the Jinja path must decide
    (a missing key, a value other than a plain string or number, an output past the limit)."""
    # Template.generate(**context) fails on a "self" key and on one that is not a string.
    if "self" in context or any(type(key) is not str for key in context):
        return None
    try:
        out: list[str] = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            name, keys = piece
            value = context.get(name, _MISSING)
            for key in keys:
                if type(value) is not dict:
                    return None
                value = value.get(key, _MISSING)
            if type(value) is str:
                if html:  # markupsafe.escape's replacements, without making a Markup
                    value = (
                        value.replace("&", "&amp;")
                        .replace(">", "&gt;")
                        .replace("<", "&lt;")
                        .replace("'", "&#39;")
                        .replace('"', "&#34;")
                    )
                out.append(value)
            elif type(value) in _PRINTABLE:  # nothing in them to escape
                out.append(str(value))
            else:
                return None
        text = "".join(out)
    except ValueError:  # an int too long to print
        return None
    return text if len(text) <= MAX_OUTPUT_CHARS else None


def render(source: str, context: Mapping[str, Any], *, html: bool = False) -> str:
    """Render one template with ``context`` under the module's limits.

    Raises :class:`PermanentError`: ``template.missing_key`` (a variable the event did not
    carry), ``template.limit`` (too long, too many iterations or calls, too large a value),
    ``template.error`` (anything else the template does wrong).
    """
    pieces = _compile_fast(source, html)
    if pieces is not None and type(context) is dict:
        text = _render_fast(pieces, context, html)
        if text is not None:
            return text
    return _render_jinja(source, context, html=html)


def _render_jinja(source: str, context: Mapping[str, Any], *, html: bool = False) -> str:
    """:func:`render` through Jinja, always (the fast path's fallback, and its reference)."""
    budget = _Budget()
    token = _BUDGET.set(budget)
    try:
        chunks: list[str] = []
        size = 0
        for chunk in _compile(source, html).generate(**context):
            size += len(chunk)
            _check_size(size, "the rendered text")
            budget.check_time()
            chunks.append(chunk)
        return "".join(chunks)
    except TemplateLimitError as exc:
        raise PermanentError(
            f"template went past a limit: {exc}", error_class="template.limit"
        ) from None
    except RecursionError:
        raise PermanentError(
            "template went past a limit: recursion too deep", error_class="template.limit"
        ) from None
    except UndefinedError as exc:
        raise PermanentError(
            f"template needs a value the event did not carry: {exc.message}",
            error_class="template.missing_key",
        ) from None
    except TemplateError as exc:
        raise PermanentError(f"template error: {exc}", error_class="template.error") from None
    except SyntaxError as exc:  # a template saved around validate() (straight to Kafka)
        raise PermanentError(
            f"template error: nested too deeply to compile ({exc.msg})",
            error_class="template.error",
        ) from None
    except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
        # A runtime error of the template itself ({{ 1 / 0 }}, {{ 'a' + 1 }}).
        raise PermanentError(
            f"template error: {type(exc).__name__}: {exc}", error_class="template.error"
        ) from None
    finally:
        _BUDGET.reset(token)


def validate(source: str) -> None:
    """Raise ValueError when ``source`` does not compile as a notification template: longer
    than :data:`MAX_SOURCE_CHARS`, a syntax error, an unknown filter or test, a construct of
    :data:`_FORBIDDEN`, a private name, or a constant expression past a limit (used by the
    admin API when an event type is saved)."""
    if len(source) > MAX_SOURCE_CHARS:
        raise ValueError(f"invalid template: {len(source)} characters; at most {MAX_SOURCE_CHARS}")
    try:
        _compile(source, False)
    except TemplateError as exc:
        raise ValueError(f"invalid template: {exc}") from None
    except TemplateLimitError as exc:
        raise ValueError(f"invalid template: it would go past a limit: {exc}") from None
    except (RecursionError, SyntaxError) as exc:
        # Python's limits on the code Jinja generates: 20 nested blocks, 100 indentation
        # levels, the interpreter's recursion depth (deeply nested parentheses or operators).
        reason = exc.msg if isinstance(exc, SyntaxError) else "recursion too deep"
        raise ValueError(f"invalid template: nested too deeply to compile ({reason})") from None


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
