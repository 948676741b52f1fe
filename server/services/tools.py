"""Tool calling: tools into the prompt, ``tool_choice`` into a grammar, calls out of the text.

Hearth's models call a tool by writing::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

(the form Hermes-style chat templates teach). Forced calls (``required`` or a named function)
are constrained by a grammar from the first token, so the arguments are valid JSON matching
the function's parameters. With ``auto`` the text is free until ``<tool_call>`` appears, and
constrained from there on. The parser below turns the calls back into OpenAI ``tool_calls``,
for whole responses and, incrementally, for streams.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.engine.grammar import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    FunctionSpec,
    SchemaNotSupported,
    tool_call_grammar,
)
from server.engine.types import Grammar
from server.errors import InvalidRequestError
from server.protocol.chat import ChatCompletionRequest, FunctionCall, NamedToolChoice, ToolCall

# For chat templates that know nothing of tools: how the model learns what it may call.
FALLBACK_TOOLS_PROMPT = """You can call functions. To call one, answer with exactly
{open}
{{"name": "<function name>", "arguments": <the arguments as a JSON object>}}
{close}
Available functions (JSON schema of each one's arguments):
{functions}"""

EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    """The tools a request offers the model, and how its output is constrained."""

    tools: list[dict[str, Any]]  # as OpenAI sent them, for templates that take ``tools=``
    functions: list[FunctionSpec]
    grammar: Grammar


def plan_tools(request: ChatCompletionRequest) -> ToolPlan | None:
    """None when the model is not to call tools (no tools, or ``tool_choice: "none"``)."""
    choice = request.tool_choice
    if not request.tools:
        if choice is not None and choice != "none":
            raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
        return None
    if choice == "none":
        return None
    functions = [
        FunctionSpec(t.function.name, t.function.parameters or EMPTY_PARAMETERS)
        for t in request.tools
    ]
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tool function names must be unique", param="tools")
    parallel = request.parallel_tool_calls is not False
    try:
        if isinstance(choice, NamedToolChoice):
            chosen = [f for f in functions if f.name == choice.function.name]
            if not chosen:
                raise InvalidRequestError(
                    f"tool_choice names function '{choice.function.name}', which is not "
                    "among the tools",
                    param="tool_choice",
                )
            grammar = tool_call_grammar(chosen, parallel=False)
        elif choice == "required":
            grammar = tool_call_grammar(functions, parallel=parallel)
        else:  # "auto", the default
            grammar = tool_call_grammar(functions, parallel=parallel, lazy=True)
    except SchemaNotSupported as exc:
        raise InvalidRequestError(
            f"a tool's parameters cannot be enforced: {exc}", param="tools"
        ) from exc
    tools = [t.model_dump(exclude_none=True) for t in request.tools]
    return ToolPlan(tools, functions, grammar)


def fallback_tools_prompt(functions: Sequence[FunctionSpec], descriptions: dict[str, str]) -> str:
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
    return FALLBACK_TOOLS_PROMPT.format(
        open=TOOL_CALL_OPEN, close=TOOL_CALL_CLOSE, functions=listing
    )


def render_call(name: str, arguments: Any) -> str:
    """A call as the model writes it (for assistant turns in the history)."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def parse_arguments(arguments: Any) -> Any:
    """OpenAI sends arguments as JSON text; templates and prompts want the value."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


class ToolCallParser:
    """Splits a choice's output into content and tool calls, incrementally.

    Text that might be the start of ``<tool_call>`` is held back until it is clearly not; a
    call is released when its closing tag arrives. Whitespace between calls is dropped. A
    call that is not valid JSON naming a known function is returned as content, unchanged.
    """

    def __init__(self, functions: Sequence[FunctionSpec]) -> None:
        self._names = {f.name for f in functions}
        self._buffer = ""
        self._in_call = False
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Add output text; returns the content now safe to show and the calls completed."""
        self._buffer += text
        content: list[str] = []
        calls: list[ToolCall] = []
        while True:
            if not self._in_call:
                start = self._buffer.find(TOOL_CALL_OPEN)
                if start < 0:
                    keep = _partial_suffix(self._buffer, TOOL_CALL_OPEN)
                    content.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                content.append(self._buffer[:start])
                self._buffer = self._buffer[start + len(TOOL_CALL_OPEN) :]
                self._in_call = True
            end = self._buffer.find(TOOL_CALL_CLOSE)
            if end < 0:
                break
            raw, self._buffer = self._buffer[:end], self._buffer[end + len(TOOL_CALL_CLOSE) :]
            self._in_call = False
            call = self._parse(raw)
            if call is None:
                content.append(TOOL_CALL_OPEN + raw + TOOL_CALL_CLOSE)
            else:
                calls.append(call)
        self.calls += calls
        return self._visible("".join(content)), calls

    def finish(self) -> str:
        """The end of the output: whatever is held back is content after all."""
        rest = (TOOL_CALL_OPEN if self._in_call else "") + self._buffer
        self._buffer, self._in_call = "", False
        return self._visible(rest)

    def _visible(self, content: str) -> str:
        # Once the model has called a tool, the newlines between calls are not content.
        return "" if self.calls and not content.strip() else content

    def _parse(self, raw: str) -> ToolCall | None:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict) or value.get("name") not in self._names:
            return None
        arguments = value.get("arguments", {})
        return ToolCall(
            id=f"call_{uuid.uuid4().hex[:24]}",
            function=FunctionCall(
                name=value["name"], arguments=json.dumps(arguments, ensure_ascii=False)
            ),
        )


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
