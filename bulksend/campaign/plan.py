"""The compiled message plan: a template without logic as constant text and slots.

How this works. Most campaign templates only print merge fields: ``Hello {{ first_name }}``.
For those, Jinja2's generated code (a context object, a generator, a yield per piece) costs
more than the message's encoding. At campaign load, :func:`compile_template` reads the
template's syntax tree; when it holds nothing but text, printed names, a few filters from
:data:`SAFE_FILTERS` with constant arguments and ``{% for x in range(<constants>) %}`` loops
over such pieces (unrolled here), it becomes a :class:`TextPlan`: constant strings and
:class:`Slot` s. Anything else (conditions, assignments, attribute access, calls, other
filters) keeps the template on Jinja2.

The plan does what the code Jinja2 generates does, with the same functions, so its output is
the same string: a name is looked up in the message's context (a missing one becomes the
environment's ``StrictUndefined``, which raises when printed), the filters are the
environment's own functions, and a printed value goes through ``str`` (text) or
``markupsafe.escape`` (HTML, autoescaped). Output is limited to ``max_message_size`` exactly
as the renderer counts Jinja2's pieces (``_Field.render`` in :mod:`bulksend.campaign.render`),
and errors are the ones Jinja2 raises, in the same order.

A body (:class:`BodyPlan`) goes one step further: quoted-printable encoding
(:func:`qp_body`, RFC 2045 §6.7) works line by line (soft breaks at 76 columns restart at each
line; CR/CRLF normalisation never spans a newline; the end-of-data rules only touch the last
line), so the lines without a slot are encoded once, at load, and only the runs of lines that
hold a slot are encoded per message, with the same :func:`qp_body`. A message's body is then
a ``b"".join`` of precomputed bytes and a few encoded runs. The hypothesis test in
``tests/campaign/test_campaign_plan.py`` holds both paths to the same bytes.
"""

from __future__ import annotations

import binascii
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.utils import missing
from markupsafe import escape

__all__ = [
    "SAFE_FILTERS",
    "BodyPlan",
    "Slot",
    "TextPlan",
    "compile_template",
    "qp_body",
    "too_large",
]

#: Filters a fast-path template may use (with constant arguments): pure functions of their
#: value, the same in both environments.
SAFE_FILTERS = frozenset(
    {"default", "d", "urlencode", "upper", "lower", "title", "capitalize", "trim", "e", "escape"}
)
_MAX_UNROLL = 1000  # loop iterations a plan unrolls; a longer loop stays on Jinja2


def too_large(limit: int) -> SecurityError:
    """The error for a template whose output exceeds ``max_message_size``."""
    return SecurityError(
        f"the template's output exceeds max_message_size ({limit:,} bytes); check the "
        "template, or raise [campaign] max_message_size"
    )


def qp_body(text: str) -> bytes:
    """Quoted-printable body with CRLF line endings, ending in CRLF (RFC 2045 §6.7)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


_Filter = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class Slot:
    """A printed merge field: its name, its filters, and how it is printed."""

    __slots__ = ("filters", "html", "key", "name", "undefined")

    def __init__(
        self,
        name: str,
        filters: tuple[_Filter, ...],
        html: bool,
        undefined: type[jinja2.Undefined],
    ) -> None:
        self.name = name
        self.filters = filters
        self.html = html
        self.undefined = undefined
        self.key = (name, html, tuple((id(f), a, tuple(sorted(k.items()))) for f, a, k in filters))

    def __call__(self, context: Mapping[str, object]) -> str:
        value = context.get(self.name, missing)
        if value is missing:
            value = self.undefined(name=self.name)
        if self.filters:
            for function, args, kwargs in self.filters:
                value = function(value, *args, **kwargs)
        return str(escape(value)) if self.html else str(value)


class TextPlan:
    """A template as constant strings around slots: ``consts[0] slots[0] consts[1] ...``.

    A slot printed several times (the same name and filters) is evaluated once per message:
    :meth:`values` returns the ``distinct`` slots' values, and ``format`` refers to them by
    index. ``assumed`` pairs each global the plan resolved at load (``range``) with its
    value: a context that gives the name another value (a merge field called ``range``)
    must use Jinja2 (:meth:`fits`).
    """

    __slots__ = (
        "assumed",
        "consts",
        "counts",
        "distinct",
        "format",
        "limit",
        "order",
        "size",
        "slots",
    )

    def __init__(
        self,
        consts: Sequence[str],
        slots: Sequence[Slot],
        limit: int,
        assumed: Mapping[str, object],
    ) -> None:
        self.consts = tuple(consts)
        self.slots = tuple(slots)
        self.limit = limit
        self.assumed = tuple(assumed.items())
        self.size = sum(map(len, self.consts))
        index: dict[object, int] = {}
        distinct: list[Slot] = []
        for slot in slots:
            if slot.key not in index:
                index[slot.key] = len(distinct)
                distinct.append(slot)
        self.distinct = tuple(distinct)
        self.order = tuple(index[slot.key] for slot in slots)  # each slot's value's index
        self.counts = tuple(self.order.count(i) for i in range(len(index)))
        pieces: list[str | int] = [self.consts[0]]
        for n, const in enumerate(self.consts[1:]):
            pieces += [n, const]
        self.format = _format(pieces, self.order)

    def fits(self, context: Mapping[str, object]) -> bool:
        """Whether ``context`` leaves the globals the plan resolved at load as they were."""
        return not self.assumed or all(context.get(n) is v for n, v in self.assumed)

    def values(self, context: Mapping[str, object]) -> list[str]:
        """The distinct slots' printed values.

        Raises:
            SecurityError: the output exceeds the limit (as soon as Jinja2 would notice).
            Exception: what a slot raises (an undefined name, a filter's error).
        """
        try:
            values = [slot(context) for slot in self.distinct]
        except Exception:
            self._replay(context)  # raises what Jinja2 raises first
            raise
        if self.size + sum(map(operator.mul, self.counts, map(len, values))) > self.limit:
            raise too_large(self.limit)
        return values

    def _replay(self, context: Mapping[str, object]) -> None:
        """Evaluate piece by piece, counting output as Jinja2 does, to raise its first error."""
        size = 0
        for const, slot in zip(self.consts, self.slots, strict=False):
            size += len(const)
            if size > self.limit:
                raise too_large(self.limit)
            size += len(slot(context))
            if size > self.limit:
                raise too_large(self.limit)

    def render(self, context: Mapping[str, object]) -> str:
        """The template's output for ``context``."""
        return self.format.format(*self.values(context))


class BodyPlan:
    """A body template's quoted-printable bytes: constant runs of lines encoded at load.

    ``units`` are the body's runs of lines in order, encoded (lines without a slot) or
    empty; ``runs`` gives each empty one's position and its format, filled with
    :meth:`TextPlan.values` and encoded per message.
    """

    __slots__ = ("runs", "text", "units")

    def __init__(self, text: TextPlan) -> None:
        self.text = text
        lines: list[list[str | int]] = [[]]
        for index, const in enumerate(text.consts):
            if index:
                lines[-1].append(index - 1)
            for n, part in enumerate(const.split("\n")):
                if n:
                    lines[-1].append("\n")
                    lines.append([])
                if part:
                    lines[-1].append(part)
        if not lines[-1]:
            lines.pop()
        units: list[bytes] = []
        runs: list[tuple[int, str]] = []
        run: list[str | int] = []
        for i, line in enumerate(lines):
            run += line
            slotted = any(isinstance(p, int) for p in line)
            if i + 1 == len(lines) or slotted != any(isinstance(p, int) for p in lines[i + 1]):
                if slotted:
                    runs.append((len(units), _format(run, text.order)))
                    units.append(b"")
                else:
                    units.append(qp_body("".join(p for p in run if isinstance(p, str))))
                run = []
        self.units = tuple(units) or (qp_body(""),)
        self.runs = tuple(runs)

    def encode(self, values: Sequence[str]) -> bytes:
        """The encoded body, given :meth:`TextPlan.values`."""
        out = list(self.units)
        try:
            for position, fmt in self.runs:
                text = fmt.format(*values)
                # Only the last run can print nothing (the others end in a newline): then
                # the lines before it end the body, as they would end the whole text.
                out[position] = qp_body(text) if text or not position else b""
        except UnicodeEncodeError:
            return qp_body(self.text.format.format(*values))  # raises with whole-text positions
        return b"".join(out)


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _format(pieces: Sequence[str | int], order: Sequence[int]) -> str:
    """A :meth:`str.format` string: text and, for the ``n``-th slot, ``{order[n]}``."""
    return "".join(f"{{{order[p]}}}" if isinstance(p, int) else _braces(p) for p in pieces)


# --------------------------------------------------------------------------------------------
# Compiling: the syntax tree -> a TextPlan, or None (Jinja2)


class _Logic(Exception):
    """The template uses something the plan does not do: it stays on Jinja2."""


def compile_template(env: jinja2.Environment, ast: nodes.Template, limit: int) -> TextPlan | None:
    """A plan for a parsed template, or None when it needs Jinja2.

    ``env`` is the environment the template was compiled in (its filters, globals,
    undefined type and autoescaping are the plan's); ``limit`` caps the output.
    """
    html = bool(env.autoescape)
    pieces: list[str | Slot] = []
    assumed: dict[str, object] = {}
    try:
        for node in ast.body:
            if isinstance(node, nodes.Output):
                _output(env, html, node.nodes, pieces, None)
            elif isinstance(node, nodes.For):
                _unroll(env, html, node, pieces, assumed)
            else:
                raise _Logic
    except _Logic:
        return None
    consts: list[str] = [""]
    slots: list[Slot] = []
    for piece in pieces:
        if isinstance(piece, str):
            consts[-1] += piece
        else:
            slots.append(piece)
            consts.append("")
    return TextPlan(consts, slots, limit, assumed)


def _printed(html: bool, value: object) -> str:
    return str(escape(value)) if html else str(value)


def _constant(node: nodes.Node) -> Any:
    if not isinstance(node, nodes.Const) or not isinstance(node.value, str | int | float):
        raise _Logic
    return node.value


def _output(
    env: jinja2.Environment,
    html: bool,
    children: Sequence[nodes.Node],
    pieces: list[str | Slot],
    loop: tuple[str, object] | None,
) -> None:
    for child in children:
        if isinstance(child, nodes.TemplateData):
            pieces.append(child.data)
        elif isinstance(child, nodes.Const):
            pieces.append(_printed(html, _constant(child)))
        elif isinstance(child, nodes.Name) and loop is not None and child.name == loop[0]:
            pieces.append(_printed(html, loop[1]))
        else:
            pieces.append(_slot(env, html, child, loop))


def _slot(
    env: jinja2.Environment, html: bool, node: nodes.Node, loop: tuple[str, object] | None
) -> Slot:
    filters: list[_Filter] = []
    while isinstance(node, nodes.Filter):
        function = env.filters.get(node.name)
        if (
            node.name not in SAFE_FILTERS
            or function is None
            or getattr(function, "jinja_pass_arg", None) is not None
            or node.dyn_args is not None
            or node.dyn_kwargs is not None
            or node.node is None
        ):
            raise _Logic
        args = tuple(_constant(a) for a in node.args)
        kwargs: dict[str, Any] = {}
        for keyword in node.kwargs:
            if not isinstance(keyword.key, str):
                raise _Logic
            kwargs[keyword.key] = _constant(keyword.value)
        filters.append((function, args, kwargs))
        node = node.node
    if not isinstance(node, nodes.Name) or node.ctx != "load":
        raise _Logic
    if loop is not None and node.name in (loop[0], "loop"):
        raise _Logic  # a filtered loop variable, or the loop object
    return Slot(node.name, tuple(reversed(filters)), html, env.undefined)


def _unroll(
    env: jinja2.Environment,
    html: bool,
    node: nodes.For,
    pieces: list[str | Slot],
    assumed: dict[str, object],
) -> None:
    """``{% for x in range(<constants>) %}`` over plain output: the body, once per value."""
    call = node.iter
    if (
        node.else_
        or node.test is not None
        or node.recursive
        or not isinstance(node.target, nodes.Name)
        or not isinstance(call, nodes.Call)
        or not isinstance(call.node, nodes.Name)
        or call.node.name != "range"
        or call.kwargs
        or call.dyn_args is not None
        or call.dyn_kwargs is not None
        or not all(isinstance(b, nodes.Output) for b in node.body)
    ):
        raise _Logic
    function = env.globals.get("range")
    if not callable(function):
        raise _Logic
    try:
        values = list(function(*(_constant(a) for a in call.args)))
    except (TypeError, ValueError, OverflowError):
        raise _Logic from None
    if len(values) > _MAX_UNROLL:
        raise _Logic
    assumed["range"] = function
    target = node.target.name
    for value in values:
        for output in node.body:
            assert isinstance(output, nodes.Output)
            _output(env, html, output.nodes, pieces, (target, value))
