"""Anthropic's request shapes to the pipeline's: system, messages and their content blocks,
tools, tool_choice and thinking.

What Claude Code sends is the benchmark: system prompts as text blocks (the first of them a
billing header line that changes with every prompt), a ``system`` message at the end of the
conversation, ``tool_result`` blocks with ``is_error`` and ``cache_control``, thinking blocks
passed back, and server tools next to its own."""

from __future__ import annotations

import logging
import re
from typing import Any

from server.errors import InvalidRequestError, UnsupportedFeatureError
from server.protocol.anthropic import CountTokensRequest
from server.services.spec import FunctionTool, OutputFormat, PastCall, ToolChoice, Turn
from server.services.tools import arguments_object

logger = logging.getLogger(__name__)

# Anthropic's rule for tool names (MCP tools are "mcp__server__tool").
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
# Claude Code's first system line: its version and a hash of the prompt. It changes with
# every prompt, so a conversation's prefix would never be found in the KV cache again.
BILLING_HEADER = re.compile(r"^x-anthropic-billing-header:[^\n]*(\n|$)", re.MULTILINE)
# Blocks a model can't read: refused rather than silently dropped, so nothing is lost unseen.
_UNREADABLE = frozenset({"image", "document", "search_result", "container_upload"})
# Blocks of the model's own past turns that chat templates have no place for.
_DROPPED = frozenset({"thinking", "redacted_thinking"})


def system_text(body: CountTokensRequest, keep_billing_header: bool) -> str:
    """The system prompt as one text (text blocks joined by blank lines)."""
    system = body.system
    if system is None:
        return ""
    if isinstance(system, str):
        texts = [system]
    else:
        texts = [_block_text(block, f"system[{i}]") for i, block in enumerate(system)]
    if not keep_billing_header:
        texts = [BILLING_HEADER.sub("", text) for text in texts]
    return "\n\n".join(text for text in texts if text)


def conversation(body: CountTokensRequest, keep_billing_header: bool) -> list[Turn]:
    """The system prompt and messages as turns, in the form chat templates take."""
    turns: list[Turn] = []
    system = system_text(body, keep_billing_header)
    if system:
        turns.append(Turn("system", system))
    for i, message in enumerate(body.messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequestError(f"{where} must be an object", param=where)
        role = message.get("role")
        content = message.get("content")
        if role == "user":
            turns += _user_turns(content, where)
        elif role == "assistant":
            turns += _assistant_turns(content, where)
        elif role == "system":
            _add_system(turns, _content_text(content, f"{where}.content"))
        else:
            raise InvalidRequestError(f"{where}.role must be user or assistant", param=where)
    if not any(t.role in ("user", "tool") for t in turns):
        raise InvalidRequestError(
            "messages: at least one user message is required", param="messages"
        )
    return turns


def _add_system(turns: list[Turn], text: str) -> None:
    """A ``system`` message inside the conversation (Claude Code sends its environment that
    way, last). Many chat templates refuse a system turn after the first, so its text joins
    the user turn before it (or the system prompt when it comes first)."""
    if not text:
        return
    if turns and turns[-1].role == "user" and isinstance(turns[-1].content, str):
        last = turns[-1]
        turns[-1] = Turn("user", f"{last.content}\n\n{text}" if last.content else text)
    elif not turns or (len(turns) == 1 and turns[0].role == "system"):
        before = turns[0].content if turns else ""
        turns[:1] = [Turn("system", f"{before}\n\n{text}" if before else text)]
    else:
        turns.append(Turn("user", text))


def _user_turns(content: Any, where: str) -> list[Turn]:
    """A user message: its tool results (each a ``tool`` turn) and its text, in order."""
    if isinstance(content, str):
        return [Turn("user", content)]
    turns: list[Turn] = []
    texts: list[str] = []
    for j, block in enumerate(_blocks(content, f"{where}.content")):
        at = f"{where}.content[{j}]"
        kind = block.get("type")
        if kind == "tool_result":
            if texts:
                turns.append(Turn("user", "\n\n".join(texts)))
                texts = []
            use_id = block.get("tool_use_id")
            if not isinstance(use_id, str):
                raise InvalidRequestError(f"{at}.tool_use_id is required", param=at)
            text = _content_text(block.get("content"), f"{at}.content")
            if block.get("is_error") is True:
                text = f"Error: {text}" if text else "Error"
            turns.append(Turn("tool", text, tool_call_id=use_id))
        elif kind in _UNREADABLE:
            raise UnsupportedFeatureError(
                f"{at} is a block of type {kind!r}; only text reaches the model", param=at
            )
        elif kind == "text":
            texts.append(_block_text(block, at))
        else:
            logger.debug("leaving out a user block of type %r", kind)
    if texts or not turns:
        turns.append(Turn("user", "\n\n".join(texts)))
    return turns


def _assistant_turns(content: Any, where: str) -> list[Turn]:
    """An assistant message: its text and the tools it called (thinking is not replayed)."""
    if isinstance(content, str):
        return [Turn("assistant", content)]
    texts: list[str] = []
    calls: list[PastCall] = []
    for j, block in enumerate(_blocks(content, f"{where}.content")):
        at = f"{where}.content[{j}]"
        kind = block.get("type")
        if kind == "text":
            texts.append(_block_text(block, at))
        elif kind == "tool_use":
            name, use_id, arguments = block.get("name"), block.get("id"), block.get("input", {})
            if not isinstance(name, str) or not isinstance(use_id, str):
                raise InvalidRequestError(f"{at} needs a name and an id", param=at)
            if not isinstance(arguments, dict):
                raise InvalidRequestError(f"{at}.input must be an object", param=f"{at}.input")
            calls.append(PastCall(name, arguments, use_id))
        elif kind not in _DROPPED:
            logger.debug("leaving out an assistant block of type %r", kind)
    text = "".join(texts)
    return [Turn("assistant", text or (None if calls else ""), tool_calls=tuple(calls))]


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise InvalidRequestError(f"{where} must be text or a list of blocks", param=where)
    return content


def _block_text(block: Any, where: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("text"), str):
        raise InvalidRequestError(f"{where} must be a text block", param=where)
    text: str = block["text"]
    return text


def _content_text(content: Any, where: str) -> str:
    """A tool result's or system message's content: text, or blocks of which text is read."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, block in enumerate(_blocks(content, where)):
        kind = block.get("type")
        if kind == "text":
            texts.append(_block_text(block, f"{where}[{j}]"))
        elif kind in _UNREADABLE:
            raise UnsupportedFeatureError(
                f"{where}[{j}] is a block of type {kind!r}; only text reaches the model",
                param=f"{where}[{j}]",
            )
    return "\n\n".join(texts)


def function_tools(tools: list[dict[str, Any]] | None) -> tuple[FunctionTool, ...]:
    """Client tools; server tools (web search, code execution, ...) are left out, logged."""
    functions: list[FunctionTool] = []
    left_out: set[str] = set()
    for i, tool in enumerate(tools or []):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequestError(f"{where} must be an object", param=where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            left_out.add(str(kind))
            continue
        name, description = tool.get("name"), tool.get("description")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise InvalidRequestError(
                f"{where}.name must be 1 to 128 letters, digits, '_' or '-'",
                param=f"{where}.name",
            )
        if description is not None and not isinstance(description, str):
            raise InvalidRequestError(
                f"{where}.description must be a string", param=f"{where}.description"
            )
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise InvalidRequestError(
                f"{where}.input_schema must be an object", param=f"{where}.input_schema"
            )
        # `strict: true` (Anthropic's strict tool use) keeps the schema a promise.
        functions.append(FunctionTool(name, description, schema, tool.get("strict") is True))
    if left_out:
        logger.info("leaving out tools Hearth cannot run: %s", ", ".join(sorted(left_out)))
    return tuple(functions)


def tool_choice(choice: dict[str, Any] | None) -> tuple[ToolChoice | None, bool]:
    """The choice, and whether several calls may come in one turn."""
    if choice is None:
        return None, True
    parallel = choice.get("disable_parallel_tool_use") is not True
    kind = choice.get("type")
    if kind == "auto":
        return ToolChoice("auto"), parallel
    if kind == "any":
        return ToolChoice("required"), parallel
    if kind == "none":
        return ToolChoice("none"), parallel
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise InvalidRequestError("tool_choice.name is required", param="tool_choice.name")
        return ToolChoice("function", name), False
    raise InvalidRequestError(
        "tool_choice.type must be auto, any, tool or none", param="tool_choice.type"
    )


def output_format(output_config: dict[str, Any] | None) -> OutputFormat | None:
    """``output_config.format``: JSON matching a schema (Anthropic's structured output)."""
    form = (output_config or {}).get("format")
    if form is None:
        return None
    if not isinstance(form, dict) or form.get("type") != "json_schema":
        raise InvalidRequestError(
            "output_config.format must be of type json_schema", param="output_config.format"
        )
    schema = form.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequestError(
            "output_config.format.schema must be an object", param="output_config.format.schema"
        )
    # Anthropic's structured output promises the schema: refused where it cannot be kept.
    return OutputFormat("json_schema", schema, strict=True)


def template_kwargs(
    thinking: dict[str, Any] | None, output_config: dict[str, Any] | None
) -> dict[str, Any]:
    """``thinking`` as the chat template's switch (templates that think read
    ``enable_thinking``); ``adaptive`` leaves the model's default. An effort in
    ``output_config`` becomes ``reasoning_effort``."""
    kwargs: dict[str, Any] = {}
    kind = (thinking or {}).get("type")
    if kind == "enabled":
        kwargs["enable_thinking"] = True
    elif kind == "disabled":
        kwargs["enable_thinking"] = False
    effort = (output_config or {}).get("effort")
    if isinstance(effort, str) and len(effort) <= 64:
        kwargs["reasoning_effort"] = effort
    return kwargs


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments (JSON text, an object by the tool grammar) as ``tool_use.input``."""
    return arguments_object(arguments)
