"""Tool calling: tools into the prompt, ``tool_choice`` into a grammar, calls out of the text.

Hearth's models call a tool by writing::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

(the form Hermes-style chat templates teach). Forced calls (``required`` or a named function)
are constrained by a grammar from the first token, so the arguments are valid JSON matching
the function's parameters. With ``auto`` the text is free until ``<tool_call>`` appears, and
constrained from there on. The parser below turns the calls back into :class:`ParsedCall`s,
for whole responses and, incrementally, for streams.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from server.engine.grammar import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    FunctionSpec,
    SchemaNotSupported,
    tool_call_grammar,
)
from server.engine.grammar_limits import GrammarLimitError
from server.engine.relax import relax_schema
from server.engine.types import Grammar
from server.errors import InvalidRequestError
from server.json_depth import MAX_JSON_DEPTH, nesting_depth
from server.services.spec import FunctionTool, ToolChoice

# For chat templates that know nothing of tools: how the model learns what it may call.
FALLBACK_TOOLS_PROMPT = """You can call functions. To call one, answer with exactly
{open}
{{"name": "<function name>", "arguments": <the arguments as a JSON object>}}
{close}
Available functions (JSON schema of each one's arguments):
{functions}"""
OWN_FORM_TOOLS_PROMPT = """You can call functions. To call one, answer with exactly
{form}
with the function's name for FUNCTION_NAME and its arguments as the JSON object.
Available functions (JSON schema of each one's arguments):
{functions}"""

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
# A non-strict tool whose relaxed parameters still make no usable grammar (a property name
# llama.cpp's grammar parser refuses, more alternatives than the bound...): any object.
ANY_OBJECT: dict[str, Any] = {"type": "object"}

logger = logging.getLogger(__name__)


CallMode = Literal["auto", "required", "one"]


class CallParser(Protocol):
    calls: list[ParsedCall]

    def feed(self, text: str) -> tuple[str, list[CallDelta]]: ...

    def finish(self, *, partial_as_content: bool = True) -> str: ...


class CallFormat(Protocol):
    """How a model writes calls (see :mod:`server.services.formats`)."""

    @property
    def parallel(self) -> bool: ...

    def grammar(
        self, functions: Sequence[FunctionSpec], mode: CallMode, *, parallel: bool
    ) -> Grammar: ...

    def parser(self, functions: Sequence[FunctionSpec]) -> CallParser: ...


@dataclass(frozen=True)
class ToolPlan:
    """The tools a request offers the model, and how its output is constrained."""

    tools: list[dict[str, Any]]  # as chat templates take them (their ``tools`` variable)
    functions: list[FunctionSpec]
    grammar: Grammar
    format: CallFormat | None = None  # None: the house format

    def parser(self) -> CallParser:
        """A parser for one choice's output."""
        if self.format is None:
            return ToolCallParser(self.functions)
        return self.format.parser(self.functions)


def plan_tools(
    tools: Sequence[FunctionTool],
    choice: ToolChoice | None,
    *,
    parallel: bool = True,
    fmt: CallFormat | None = None,
) -> ToolPlan | None:
    """None when the model is not to call tools (no tools, or the choice is ``none``).

    A tool with ``strict: true`` is a promise: a keyword its grammar cannot enforce is a 400
    naming it. Every other tool's parameters are a hint, relaxed to what the grammar enforces
    (:mod:`server.engine.relax`), and what was relaxed is logged once for the request.
    ``fmt``: how the model writes calls (its chat format); None, Hearth's house format."""
    if not tools:
        if choice is not None and choice.mode != "none":
            raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
        return None
    if choice is not None and choice.mode == "none":
        return None
    functions = [FunctionSpec(t.name, dict(t.parameters or EMPTY_PARAMETERS)) for t in tools]
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tool function names must be unique", param="tools")
    if choice is not None and choice.mode == "function" and choice.name not in names:
        raise InvalidRequestError(
            f"tool_choice names function '{choice.name}', which is not among the tools",
            param="tool_choice",
        )
    relaxed: list[str] = []
    enforced = [
        _enforced(tool, function, relaxed) for tool, function in zip(tools, functions, strict=True)
    ]
    try:
        try:
            grammar = _call_grammar(enforced, choice, parallel, fmt)
        except SchemaNotSupported as exc:
            if all(t.strict is True for t in tools):
                raise
            # The relaxed schemas still make no grammar llama.cpp takes: the hints go, the
            # strict tools' promises stay.
            relaxed.append(f"every non-strict tool's parameters ({exc})")
            loose = [
                f if t.strict is True else FunctionSpec(f.name, ANY_OBJECT)
                for t, f in zip(tools, enforced, strict=True)
            ]
            grammar = _call_grammar(loose, choice, parallel, fmt)
    except SchemaNotSupported as exc:
        raise InvalidRequestError(
            f"a tool's parameters cannot be enforced: {exc}", param="tools"
        ) from exc
    if relaxed:
        logger.info("tool parameters relaxed to what a grammar enforces: %s", "; ".join(relaxed))
    return ToolPlan([t.template_form() for t in tools], functions, grammar, fmt)


def _enforced(tool: FunctionTool, function: FunctionSpec, relaxed: list[str]) -> FunctionSpec:
    """The function as its grammar constrains it: relaxed unless the tool is strict."""
    if tool.strict is True:
        return function
    try:
        parameters, dropped = relax_schema(function.parameters)
    except GrammarLimitError as exc:
        raise InvalidRequestError(
            f"tool '{tool.name}': its parameters are too large: {exc}", param="tools"
        ) from exc
    relaxed += [f"{tool.name}: {where}" for where in dropped]
    return FunctionSpec(function.name, parameters)


def _call_grammar(
    functions: list[FunctionSpec],
    choice: ToolChoice | None,
    parallel: bool,
    fmt: CallFormat | None,
) -> Grammar:
    mode: CallMode = "auto"  # the default
    if choice is not None and choice.mode == "function":
        functions, mode = [f for f in functions if f.name == choice.name], "one"
    elif choice is not None and choice.mode == "required":
        mode = "required"
    if fmt is not None:
        return fmt.grammar(functions, mode, parallel=parallel and fmt.parallel)
    return tool_call_grammar(functions, parallel=parallel and mode != "one", lazy=mode == "auto")


def fallback_tools_prompt(
    functions: Sequence[FunctionSpec], descriptions: dict[str, str], form: str | None = None
) -> str:
    """The system prompt that describes the tools to a model whose template reads none:
    calls in Hearth's format, or in ``form`` (the model's own, shown for one call)."""
    listing = "\n".join(
        json.dumps(
            {
                "name": f.name,
                "description": descriptions.get(f.name, ""),
                "parameters": f.parameters,
            },
            ensure_ascii=False,
        )
        for f in functions
    )
    if form is not None:
        return OWN_FORM_TOOLS_PROMPT.format(form=form, functions=listing)
    return FALLBACK_TOOLS_PROMPT.format(
        open=TOOL_CALL_OPEN, close=TOOL_CALL_CLOSE, functions=listing
    )


def render_call(name: str, arguments: Any) -> str:
    """A call as the model writes it (for assistant turns in the history)."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def arguments_object(arguments: str) -> dict[str, Any]:
    """A call's arguments (JSON text) as the object Anthropic's ``tool_use.input`` and
    Ollama's ``tool_calls`` carry; text that is not an object (or nests too deep to send
    back) is wrapped as ``{"input": text}``."""
    value = parse_arguments(arguments) if arguments else {}
    return value if isinstance(value, dict) else {"input": value}


def parse_arguments(arguments: Any) -> Any:
    """OpenAI sends arguments as JSON text; templates and prompts want the value."""
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            return arguments
        # Rendering recurses once per level: arguments nested deeper stay text.
        return value if nesting_depth(value) <= MAX_JSON_DEPTH else arguments
    return arguments


@dataclass(frozen=True)
class ParsedCall:
    """A whole tool call the model made: ``arguments`` is its JSON text as written."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class CallDelta:
    """A piece of a tool call as it streams: the first carries its id and name, later ones
    more of its arguments (JSON text, which joins to the call's ``arguments``)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


# How a constrained call begins (the grammar writes the name before the arguments).
_CALL_HEAD = re.compile(r'^\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*')


class ToolCallParser:
    """Splits a choice's output into content and tool calls, incrementally.

    Text that might be the start of ``<tool_call>`` is held back until it is clearly not. Once
    a call's head (``{"name": "...", "arguments":``) has arrived, its id and name are released,
    then its arguments as they come, holding back only what could be the call's closing brace;
    a call whose head looks otherwise is released whole when its closing tag arrives.
    Whitespace between calls is dropped. A call that is not valid JSON naming a known function
    is returned as content, unchanged.
    """

    def __init__(self, functions: Sequence[FunctionSpec]) -> None:
        self._names = {f.name for f in functions}
        self._buffer = ""
        self._in_call = False
        self._open: CallDelta | None = None  # the call whose head has been released
        self._args_start = 0  # where its arguments begin in the buffer
        self._sent = ""  # the part of its arguments released so far
        self.calls: list[ParsedCall] = []

    def feed(self, text: str) -> tuple[str, list[CallDelta]]:
        """Add output text; returns the content now safe to show and the call pieces."""
        self._buffer += text
        content: list[str] = []
        deltas: list[CallDelta] = []
        while True:
            if not self._in_call:
                start = self._buffer.find(TOOL_CALL_OPEN)
                if start < 0:
                    keep = partial_suffix(self._buffer, TOOL_CALL_OPEN)
                    content.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                content.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN) :]
                self._in_call = True
            end = self._buffer.find(TOOL_CALL_CLOSE)
            if end < 0:
                deltas += self._stream_open_call()
                break
            raw, self._buffer = self._buffer[:end], self._buffer[end + len(TOOL_CALL_CLOSE) :]
            self._in_call = False
            deltas += self._close(raw, content)
        return self._visible("".join(content)), deltas

    def finish(self, *, partial_as_content: bool = True) -> str:
        """The end of the output: what is held back is content after all, except a call cut
        short (by max_tokens), which is dropped unless ``partial_as_content``: its markup is
        not an answer, and its arguments are not whole."""
        in_call = self._in_call
        rest = (TOOL_CALL_OPEN if in_call else "") + self._buffer
        self._buffer, self._in_call, self._open, self._sent = "", False, None, ""
        if in_call and not partial_as_content:
            return ""
        return self._visible(rest)

    def _stream_open_call(self) -> list[CallDelta]:
        deltas: list[CallDelta] = []
        if self._open is None:
            head = _CALL_HEAD.match(self._buffer)
            # Wait for the arguments' first character: the space before it may not be in yet.
            if head is None or head.end() == len(self._buffer):
                return []
            if head.group(1) not in self._names:
                return []
            self._open = CallDelta(len(self.calls), f"call_{uuid.uuid4().hex[:24]}", head.group(1))
            self._args_start, self._sent = head.end(), ""
            deltas.append(self._open)
        arguments = self._buffer[self._args_start :]
        # Everything up to the last "}" seen is arguments: the call's own closing brace can
        # only be that one or a later one.
        last_brace = arguments.rfind("}")
        safe = (arguments[:last_brace] if last_brace >= 0 else arguments).rstrip()
        if len(safe) > len(self._sent):
            deltas.append(CallDelta(self._open.index, arguments=safe[len(self._sent) :]))
            self._sent = safe
        return deltas

    def _close(self, raw: str, content: list[str]) -> list[CallDelta]:
        opened, self._open = self._open, None
        if opened is not None:
            body = raw[self._args_start :].rstrip()
            arguments = body[:-1].rstrip() if body.endswith("}") else body
            self.calls.append(ParsedCall(opened.id or "", opened.name or "", arguments))
            rest = arguments[len(self._sent) :] if arguments.startswith(self._sent) else ""
            return [CallDelta(opened.index, arguments=rest)] if rest else []
        call = self._parse(raw)
        if call is None:
            content.append(TOOL_CALL_OPEN + raw + TOOL_CALL_CLOSE)
            return []
        self.calls.append(call)
        index = len(self.calls) - 1
        return [
            CallDelta(index, call.id, call.name),
            CallDelta(index, arguments=call.arguments),
        ]

    def _visible(self, content: str) -> str:
        # Once the model has called a tool, the newlines between calls are not content.
        return "" if (self.calls or self._open) and not content.strip() else content

    def _parse(self, raw: str) -> ParsedCall | None:
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):  # over-deep JSON stays text
            return None
        if not isinstance(value, dict) or value.get("name") not in self._names:
            return None
        head = _CALL_HEAD.match(raw)
        if head is not None:  # the arguments as the model wrote them, as a stream sends them
            body = raw[head.end() :].rstrip()
            arguments = body[:-1].rstrip() if body.endswith("}") else body
        else:
            arguments = json.dumps(value.get("arguments", {}), ensure_ascii=False)
        return ParsedCall(f"call_{uuid.uuid4().hex[:24]}", value["name"], arguments)


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
