"""The Jinja environment chat templates run in: jinja2's sandbox, widened to what real
templates use, and bounded in time and size.

Templates are code from files a user downloaded (GGUF metadata, a model's config), so they
run in jinja2's sandbox: no attribute that starts with ``_``, no Python internals, no unsafe
callables. jinja2's *immutable* sandbox also forbids every mutating method, which real
templates need (llama.cpp keeps about seventy in ``models/templates``): Kimi-K2 queues
tool-call ids with ``list.append`` and ``pop``; GLM, Kimi and GigaChat call
``tojson(ensure_ascii=False)``; LFM2.5 and Laguna wrap turns in transformers'
``{% generation %}``. So this sandbox lets a template mutate plain lists and dicts (the
caller renders a deep copy of its data, so only the template's own values change), and adds
those filters and tags.

Rendering runs on the preparation threads every request shares (services/prep.py), so a
template that loops forever or doubles a string forty times would hold them all, or take the
server's memory. Each render therefore gets a budget
(:class:`RenderLimits`): a deadline checked at every loop step, call, operator, attribute and
item access and output chunk, and a ceiling on the size of every string, container and
number it builds and on its output. Past either, :class:`TemplateBudgetError`.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEnvironment,
    modifies_known_mutable,
)
from jinja2.visitor import NodeTransformer

from server.errors import ChatTemplateError


class TemplateBudgetError(Exception):
    """A render went past its time or size limit."""


@dataclass(frozen=True)
class RenderLimits:
    """How much work one render (or one compile) of a template may do."""

    seconds: float = 2.0
    # Four times the default request body (max_body_bytes, 8 MiB): a template repeats the
    # conversation at most a few times (Cohere's tool prompts show it twice).
    max_chars: int = 32 * 1024 * 1024
    max_items: int = 1_000_000
    max_int_bits: int = 4096


# The mutating methods a template may call on plain lists and dicts (its own, or the deep copy
# it was given). Not ``sort``: its ``key`` would call template code from outside the sandbox.
_MUTATORS: dict[type, frozenset[str]] = {
    list: frozenset({"append", "extend", "insert", "pop", "remove", "reverse", "clear"}),
    dict: frozenset({"update", "setdefault", "pop", "popitem", "clear"}),
}
# Widths and precisions in %-formats and str.format specs ("%9999999999d", "{:>9999999999}").
_PERCENT_NUMBERS = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d*))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")


class _Budget:
    """What one render has left, checked by every hook of :class:`TemplateSandbox`. A step
    that could multiply sizes (``*``, ``replace``, ``join``, widths) is checked before it runs;
    the rest after, which bounds the inputs of every later step."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateBudgetError(
                f"the template ran past its time limit ({self.limits.seconds:g} s)"
            )

    def measure(self, value: Any) -> Any:
        """``value``, if it is within the size limits."""
        if isinstance(value, str):
            self.check_chars(len(value))
        elif isinstance(value, list | tuple | dict | set):
            if len(value) > self.limits.max_items:
                raise TemplateBudgetError(
                    f"the template built a container of more than {self.limits.max_items} items"
                )
        elif isinstance(value, int):
            self.check_bits(value.bit_length())
        return value

    def check_chars(self, size: int) -> None:
        if size > self.limits.max_chars:
            raise TemplateBudgetError(
                f"the template built (or asked for) a string of {size} characters, more than "
                f"{self.limits.max_chars}"
            )

    def check_bits(self, bits: int) -> None:
        if bits > self.limits.max_int_bits:
            raise TemplateBudgetError(
                f"the template built a number of more than {self.limits.max_int_bits} bits"
            )

    def check_binop(self, operator: str, left: Any, right: Any) -> None:
        sized = str | list | tuple  # type: ignore[type-arg]
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, sized) and isinstance(count, int):
                    self.measure(seq)
                    self.check_chars(len(seq) * max(count, 0))
            if isinstance(left, int) and isinstance(right, int):
                self.check_bits(left.bit_length() + right.bit_length())
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right > 0:
                self.check_bits(abs(left).bit_length() * right)
        elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            self.check_chars(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            self.check_format(left, _PERCENT_NUMBERS, right if isinstance(right, tuple) else ())

    def check_format(self, fmt: str, pattern: re.Pattern[str], args: Iterable[Any]) -> None:
        """Widths and precisions in a format string, and ``*`` widths among its arguments."""
        for match in pattern.finditer(fmt):
            for group in match.groups():
                for number in re.findall(r"\d+", group or ""):
                    self.check_chars(int(number))
        if "*" in fmt:
            self.check_widths(args)

    def check_widths(self, args: Iterable[Any]) -> None:
        for arg in args:
            if isinstance(arg, int):
                self.check_chars(abs(arg))

    def before_str_call(self, name: str, text: str, args: tuple[Any, ...], kwargs: Any) -> None:
        """Before a string method or a string filter ``name`` runs on ``text``."""
        if name in _WIDTH_CALLS:
            self.check_widths((*args, *kwargs.values()))
        if name == "indent":
            width = args[0] if args else kwargs.get("width", 4)
            step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            self.check_chars(len(text) + step * (text.count("\n") + 1))
        elif name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
            old, new = args[0], args[1]
            found = text.count(old) if old else len(text) + 1
            self.check_chars(len(text) + found * max(len(new) - len(old), 0))
        elif name in ("format", "format_map"):
            self.check_format(text, _FORMAT_SPEC, ())

    def before_join(self, separator: Any, items: Any) -> None:
        if isinstance(items, list | tuple) and isinstance(separator, str):
            texts = sum(len(item) for item in items if isinstance(item, str))
            self.check_chars(texts + len(separator) * len(items))


# Calls whose integer arguments are widths or sizes of the string they build.
_WIDTH_CALLS = frozenset(
    {"center", "ljust", "rjust", "zfill", "expandtabs", "indent", "truncate", "wordwrap"}
)


class _GenerationBlock(Extension):
    """transformers' ``{% generation %}...{% endgeneration %}`` marks the assistant's text for
    training masks; a prompt keeps the body and drops the marks, as llama.cpp does."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _BoundLoopsAndJoins(NodeTransformer):
    """Routes every ``for`` loop's iterable and every ``~`` through the environment, the two
    places where compiled template code would otherwise run without a hook."""

    def __init__(self, environment: TemplateSandbox) -> None:
        self.environment = environment

    def _call(self, method: str, arg: nodes.Node, lineno: int) -> nodes.Call:
        call = nodes.Call(nodes.EnvironmentAttribute(method), [arg], [], None, None)
        return call.set_lineno(lineno).set_environment(self.environment)  # type: ignore[return-value]

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = self._call("checked_iter", node.iter, node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._call("checked_join", nodes.List(node.nodes), node.lineno)


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, plus mutation of plain lists and dicts, the filters, tests,
    globals and tags real chat templates use, and a work budget per render."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, limits: RenderLimits) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do", _GenerationBlock],
        )
        self.limits = limits
        # One render at a time per thread; renders on other threads get their own budget.
        self._local = threading.local()
        self.filters["tojson"] = _tojson
        self.filters["from_json"] = _from_json
        # Nothing is autoescaped, so `safe` marks nothing; jinja2's Markup would instead
        # HTML-escape whatever is added to it (functionary v3.1: `"\n"|safe + tool|tojson`).
        self.filters["safe"] = _plain_text
        for name, function in list(self.filters.items()):
            self.filters[name] = self._checked_filter(name, function)
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now

    def compile_template(self, source: str) -> jinja2.Template:
        """``source`` compiled, with its loops and joins bounded (raises what jinja2 raises)."""
        with self.budget():
            tree = _BoundLoopsAndJoins(self).visit(self.parse(source))
            return self.from_string(tree)

    @contextmanager
    def budget(self) -> Iterator[None]:
        """A fresh budget for the render (or compile) inside the ``with``."""
        self._local.budget = _Budget(self.limits)
        try:
            yield
        finally:
            self._local.budget = None

    def _budget(self) -> _Budget:
        budget: _Budget | None = getattr(self._local, "budget", None)
        return budget if budget is not None else _Budget(self.limits)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not SandboxedEnvironment.is_safe_attribute(self, obj, attr, value):
            return False
        if attr in _MUTATORS.get(type(obj), frozenset()):
            return True
        return not modifies_known_mutable(obj, attr)

    def getattr(self, obj: Any, attribute: str) -> Any:
        budget = self._budget()
        budget.tick()
        return budget.measure(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget = self._budget()
        budget.tick()
        return budget.measure(super().getitem(obj, argument))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = self._budget()
        budget.tick()
        # str.format comes wrapped by the sandbox; the string is the wrapped method's owner.
        receiver = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)
        if isinstance(receiver, str):
            name = getattr(obj, "__name__", "")
            if name == "join":
                budget.before_join(receiver, args[0] if args else None)
            else:
                budget.before_str_call(name, receiver, args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(receiver, list | dict):
            budget.measure(receiver)
        return budget.measure(result)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = self._budget()
        budget.tick()
        budget.check_binop(operator, left, right)
        return budget.measure(super().call_binop(context, operator, left, right))

    def checked_iter(self, iterable: Any) -> Iterator[Any]:
        """A ``for`` loop's items, each one a step against the deadline."""
        budget = self._budget()
        for item in iterable:
            budget.tick()
            yield item

    def checked_join(self, parts: list[Any]) -> str:
        """``a ~ b``: jinja2's string join, refused before it grows past the size limit."""
        texts = [str(part) for part in parts]
        self._budget().check_chars(sum(len(text) for text in texts))
        return "".join(texts)

    def concat(self, parts: Iterable[str]) -> str:
        """The rendered output, chunk by chunk against the deadline and the size limit."""
        budget = self._budget()
        total = 0
        out = []
        for part in parts:
            budget.tick()
            total += len(part)
            budget.check_chars(total)
            out.append(part)
        return "".join(out)

    def _checked_filter(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        # The filtered value comes after the context or environment a filter may ask for.
        first = 0 if getattr(function, "jinja_pass_arg", None) is None else 1

        # functools.wraps keeps jinja2's pass_context/pass_environment marks.
        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            budget = self._budget()
            budget.tick()
            value, rest = (args[first], args[first + 1 :]) if len(args) > first else (None, ())
            if name == "join":
                budget.before_join(rest[0] if rest else kwargs.get("d", ""), value)
            elif name == "format" and isinstance(value, str):
                budget.check_format(value, _PERCENT_NUMBERS, rest)
            elif isinstance(value, str):
                budget.before_str_call(name, value, rest, kwargs)
            return budget.measure(function(*args, **kwargs))

        return checked


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: Iterable[str] | None = None,
    sort_keys: bool = False,
) -> str:
    """``tojson`` as transformers and llama.cpp define it: ``json.dumps``'s arguments, text
    kept readable (not ASCII-escaped) unless asked, and no HTML escaping (jinja2's own
    ``tojson`` writes ``<`` as ``\\u003c``, which no model was trained on)."""
    return json.dumps(
        value,
        ensure_ascii=bool(ensure_ascii),
        indent=indent,
        separators=tuple(separators) if separators is not None else None,  # type: ignore[arg-type]
        sort_keys=bool(sort_keys),
        default=_json_default,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, Undefined):
        return None
    if isinstance(value, Iterator):  # what jinja2's map/select filters return
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _plain_text(value: Any) -> str:
    return str(value)


def _from_json(text: str) -> Any:
    """DeepSeek-V3.2 and V4 templates parse tool-call arguments sent as a JSON string."""
    return json.loads(text)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(
        f"the model's chat template rejected the messages: {message}", param="messages"
    )


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)
