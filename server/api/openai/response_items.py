"""The Responses API's items: request input items to conversation turns, function tools and
the request's options to the pipeline's, and the output items of a response."""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from server.errors import InvalidRequestError
from server.protocol.responses import ResponseRequest
from server.services.content import content_text
from server.services.spec import FunctionTool, OutputFormat, PastCall, ToolChoice, Turn

logger = logging.getLogger(__name__)

_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


# -- request items -------------------------------------------------------------------------


def input_items_of(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as items, as sent, each with an id unique among them (kept for
    ``input_items``, whose ``after`` names an item by its id). A client's id is kept unless
    it is empty or an earlier item's: such an item gets an id of the server's own."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    items = []
    used: set[str] = set()
    for i, item in enumerate(value):
        if not isinstance(item.get("id", ""), str) or not isinstance(item.get("type", ""), str):
            raise InvalidRequestError(
                f"input[{i}].id and input[{i}].type must be strings", param=f"input[{i}]"
            )
        kind = item.get("type") or ("message" if "role" in item else "")
        item_id = item.get("id", "")
        if not item_id or item_id in used:
            item_id = new_id("msg" if kind == "message" else "item")
        used.add(item_id)
        items.append({**item, "id": item_id, "type": kind})
    return items


def turns_of(items: list[dict[str, Any]], where: str) -> list[Turn]:
    """Input (or stored) items as conversation turns. Reasoning items and item types Hearth
    has no use for are skipped."""
    turns: list[Turn] = []
    for i, item in enumerate(items):
        kind = item.get("type")
        at = f"{where}[{i}]"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequestError(
                    f"{at}.role must be user, assistant, system or developer", param=f"{at}.role"
                )
            # Chat templates know "system"; OpenAI's "developer" is that role.
            role = "system" if role == "developer" else role
            turns.append(Turn(role, _text(item.get("content"), f"{at}.content")))
        elif kind in ("function_call", "custom_tool_call"):
            name = item.get("name")
            if not isinstance(name, str):
                raise InvalidRequestError(f"{at}.name is required", param=f"{at}.name")
            arguments = (
                item.get("arguments", "{}")
                if kind == "function_call"
                else {"input": item.get("input", "")}
            )
            call = PastCall(name, arguments, _call_id(item, at))
            last = turns[-1] if turns else None
            if last is not None and last.role == "assistant":  # calls of one turn together
                turns[-1] = Turn("assistant", last.content, tool_calls=(*last.tool_calls, call))
            else:
                turns.append(Turn("assistant", None, tool_calls=(call,)))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = _text(item.get("output"), f"{at}.output")
            turns.append(Turn("tool", output, tool_call_id=_call_id(item, at)))
        else:
            logger.debug("leaving out an input item of type %r", kind)
    return turns


def _call_id(item: dict[str, Any], where: str) -> str | None:
    call_id = item.get("call_id")
    if call_id is not None and not isinstance(call_id, str):
        raise InvalidRequestError(f"{where}.call_id must be a string", param=f"{where}.call_id")
    return call_id


def _text(content: Any, where: str) -> str:
    """A message's content (text, or text parts) as text; other parts are a 400."""
    return content_text(content, param=where, kinds=_TEXT_PARTS, refusals=True) or ""


def function_tools(tools: list[dict[str, Any]]) -> tuple[FunctionTool, ...]:
    """Function tools, namespaces flattened; hosted tools are left out (logged)."""
    functions: list[FunctionTool] = []
    left_out: set[str] = set()
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind == "function":
            functions.append(_function(tool, f"tools[{i}]"))
        elif kind == "namespace":
            inner_tools = tool.get("tools") or []
            if not isinstance(inner_tools, list):
                raise InvalidRequestError(
                    f"tools[{i}].tools must be a list of tools", param=f"tools[{i}].tools"
                )
            for j, inner in enumerate(inner_tools):
                if isinstance(inner, dict) and inner.get("type", "function") == "function":
                    functions.append(_function(inner, f"tools[{i}].tools[{j}]"))
                else:
                    left_out.add(str(inner.get("type") if isinstance(inner, dict) else inner))
        else:
            left_out.add(str(kind))
    if left_out:
        logger.info("leaving out tools Hearth cannot run: %s", ", ".join(sorted(left_out)))
    return tuple(functions)


def _function(tool: dict[str, Any], where: str) -> FunctionTool:
    name = tool.get("name")
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        raise InvalidRequestError(
            f"{where}.name must be 1 to 64 letters, digits, '_' or '-'", param=f"{where}.name"
        )
    description, strict = tool.get("description"), tool.get("strict")
    if description is not None and not isinstance(description, str):
        raise InvalidRequestError(
            f"{where}.description must be a string", param=f"{where}.description"
        )
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequestError(f"{where}.strict must be true or false", param=f"{where}.strict")
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequestError(
            f"{where}.parameters must be an object", param=f"{where}.parameters"
        )
    return FunctionTool(name, description, parameters, strict)


def tool_echo(tool: FunctionTool) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict if tool.strict is not None else True,
    }


def tool_choice_of(choice: str | dict[str, Any] | None) -> ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequestError(
                "tool_choice must be auto, none, required or a function", param="tool_choice"
            )
        return ToolChoice(choice)  # type: ignore[arg-type]
    if choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str):
            raise InvalidRequestError("tool_choice.name is required", param="tool_choice.name")
        return ToolChoice("function", name)
    return ToolChoice("auto")  # a hosted tool: left out, so the model chooses


def template_kwargs_of(body: ResponseRequest) -> dict[str, Any]:
    effort = (body.reasoning or {}).get("effort")
    return {"reasoning_effort": effort} if isinstance(effort, str) else {}


def output_format_of(body: ResponseRequest) -> OutputFormat | None:
    text_format = body.text.format if body.text is not None else None
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return OutputFormat("json_object")
    if text_format.schema_ is None:
        raise InvalidRequestError(
            "text.format of type json_schema needs a schema", param="text.format.schema"
        )
    return OutputFormat("json_schema", text_format.schema_, text_format.strict is True)


# -- output items --------------------------------------------------------------------------


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
