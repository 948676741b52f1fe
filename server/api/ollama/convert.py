"""Ollama's request shapes to the pipeline's: options, format, think, messages and tools."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from server.errors import InvalidRequestError, UnsupportedFeatureError
from server.protocol.ollama import GenerationFields, Options
from server.services.spec import (
    FunctionTool,
    OutputFormat,
    PastCall,
    Sampling,
    ToolChoice,
    Turn,
)

_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ROLES = frozenset({"system", "user", "assistant", "tool"})


def now_iso() -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def nanoseconds(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def monotonic_ns_since(start: float) -> int:
    return nanoseconds(time.monotonic() - start)


def sampling(options: Options | None) -> Sampling:
    o = options or Options()
    return Sampling(
        temperature=o.temperature,
        top_p=o.top_p,
        top_k=o.top_k,
        min_p=o.min_p,
        presence_penalty=o.presence_penalty,
        frequency_penalty=o.frequency_penalty,
        repeat_penalty=o.repeat_penalty,
        seed=o.seed,
        stop=o.stop_list(),
    )


def max_tokens(options: Options | None) -> int | None:
    """``num_predict``: -1 and -2 (and 0) mean as long as the context allows."""
    n = options.num_predict if options is not None else None
    return n if n is not None and n > 0 else None


def output_format(value: str | dict[str, Any] | None) -> OutputFormat | None:
    if value is None or value == "":
        return None
    if value == "json":
        return OutputFormat("json_object")
    if isinstance(value, dict):
        return OutputFormat("json_schema", value)
    raise InvalidRequestError('format must be "json" or a JSON schema', param="format")


def template_kwargs(body: GenerationFields) -> dict[str, Any]:
    """``think`` as the chat template's switch; a level is also its ``reasoning_effort``."""
    think = body.think
    if think is None:
        return {}
    if isinstance(think, bool):
        return {"enable_thinking": think}
    if think not in ("low", "medium", "high"):
        raise InvalidRequestError(
            'think must be true, false, "low", "medium" or "high"', param="think"
        )
    return {"enable_thinking": True, "reasoning_effort": think}


def turns(messages: list[dict[str, Any]]) -> list[Turn]:
    result: list[Turn] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(f"{where} must be an object", param=where)
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequestError(
                f"{where}.role must be system, user, assistant or tool", param=f"{where}.role"
            )
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise InvalidRequestError(f"{where}.content must be text", param=f"{where}.content")
        if message.get("images"):
            raise UnsupportedFeatureError(
                f"{where}.images: the models Hearth serves read text only", param=f"{where}.images"
            )
        calls = tuple(
            _past_call(c, f"{where}.tool_calls[{j}]")
            for j, c in enumerate(_list(message.get("tool_calls"), f"{where}.tool_calls"))
        )
        name = message.get("tool_name") or message.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidRequestError(f"{where}.tool_name must be text", param=f"{where}.tool_name")
        result.append(
            Turn(
                role,
                content if content or not calls else None,
                name=name if role == "tool" else None,
                tool_calls=calls,
            )
        )
    return result


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequestError(f"{where} must be a list", param=where)
    return value


def _past_call(call: Any, where: str) -> PastCall:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequestError(f"{where}.function.name is required", param=where)
    arguments = function.get("arguments", {})
    if not isinstance(arguments, dict | str):
        raise InvalidRequestError(f"{where}.function.arguments must be an object", param=where)
    call_id = call.get("id")
    return PastCall(function["name"], arguments, call_id if isinstance(call_id, str) else None)


def function_tools(tools: list[dict[str, Any]] | None) -> tuple[FunctionTool, ...]:
    functions = []
    for i, tool in enumerate(tools or []):
        where = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            raise InvalidRequestError(f"{where}.function is required", param=where)
        name, description = function.get("name"), function.get("description")
        parameters = function.get("parameters")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            raise InvalidRequestError(
                f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-'",
                param=f"{where}.function.name",
            )
        if description is not None and not isinstance(description, str):
            raise InvalidRequestError(f"{where}.function.description must be text", param=where)
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequestError(f"{where}.function.parameters must be an object", param=where)
        functions.append(FunctionTool(name, description, parameters))
    return tuple(functions)


def tool_choice(choice: str | dict[str, Any] | None) -> ToolChoice | None:
    """Hearth's extension: OpenAI's ``auto``, ``none``, ``required`` or a named function."""
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice)  # type: ignore[arg-type]
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise InvalidRequestError(
            'tool_choice must be "auto", "none", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    return ToolChoice("function", name)
