"""OpenAI's Responses API: POST /v1/responses, and the stored responses it keeps.

An adapter over the one pipeline, like chat: input items become conversation turns (after the
stored conversation of ``previous_response_id``, if any), function tools become the same tool
grammar chat uses, and the pipeline's content and tool calls come back as output items, whole
or as the Responses event stream. Hosted tools Hearth cannot run (web search, file search,
code interpreter, ...) are left out of the prompt, so that clients which always send them
(Codex CLI) still work.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi import Response as HTTPResponse
from fastapi.responses import JSONResponse

from server.api.deps import State, context_of
from server.api.responses import ERROR_RESPONSES, GENERATION_RESPONSES
from server.api.runner import serve
from server.api.sse import named_event_stream
from server.context import RequestContext
from server.errors import (
    HearthError,
    InvalidRequestError,
    NotFoundError,
    UnsupportedFeatureError,
)
from server.protocol.responses import (
    IncompleteDetails,
    InputItemList,
    InputTokensDetails,
    OutputTokensDetails,
    Response,
    ResponseDeleted,
    ResponseError,
    ResponseRequest,
    ResponseUsage,
)
from server.services.generation import Caller, Run
from server.services.response_store import StoredResponse, StoreError
from server.services.spec import (
    FunctionTool,
    GenerationSpec,
    OutputFormat,
    PastCall,
    Sampling,
    ToolChoice,
    Turn,
)
from server.state import AppState

logger = logging.getLogger(__name__)
router = APIRouter(tags=["responses"])

# The most conversation a stored response keeps for previous_response_id to replay.
HISTORY_LIMIT = 32 << 20
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})


@router.post("/v1/responses", response_model=Response, responses=GENERATION_RESPONSES)
async def create_response(body: ResponseRequest, request: Request, state: State) -> Any:
    adapter = ResponsesAdapter(body, state, context_of(request))
    await adapter.load_previous()
    return await serve(adapter, request, state)


@router.get("/v1/responses/{response_id}", response_model=Response, responses=ERROR_RESPONSES)
async def get_response(response_id: str, request: Request, state: State) -> Any:
    stored = await _stored(response_id, request, state)
    return JSONResponse(stored.response)


@router.delete(
    "/v1/responses/{response_id}", response_model=ResponseDeleted, responses=ERROR_RESPONSES
)
async def delete_response(response_id: str, request: Request, state: State) -> ResponseDeleted:
    if not await state.responses.delete(response_id, _owner(context_of(request))):
        raise _not_found(response_id)
    return ResponseDeleted(id=response_id)


@router.get(
    "/v1/responses/{response_id}/input_items",
    response_model=InputItemList,
    responses=ERROR_RESPONSES,
)
async def list_input_items(
    response_id: str,
    request: Request,
    state: State,
    limit: int = Query(20, ge=1, le=100),
    order: str = Query("desc", pattern="^(asc|desc)$"),
    after: str | None = None,
) -> InputItemList:
    items = (await _stored(response_id, request, state)).input_items
    if order == "desc":
        items = list(reversed(items))
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return InputItemList(
        data=page,
        first_id=page[0].get("id") if page else None,
        last_id=page[-1].get("id") if page else None,
        has_more=len(items) > limit,
    )


async def _stored(response_id: str, request: Request, state: AppState) -> StoredResponse:
    stored = await state.responses.get(response_id, _owner(context_of(request)))
    if stored is None:
        raise _not_found(response_id)
    return stored


def _owner(context: RequestContext) -> str:
    """Whose stored responses a request may see: its API key's (everyone's without keys)."""
    # The key's digest, not its name: names of unnamed keys follow their order in the
    # settings, so a key could inherit another's name when keys change.
    return context.api_key.digest.hex() if context.api_key is not None else ""


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


class ResponsesAdapter:
    def __init__(self, body: ResponseRequest, state: AppState, context: RequestContext) -> None:
        self.body = body
        self.state = state
        self.context = context
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        self.history: list[dict[str, Any]] = []  # the stored conversation continued
        # Every item is kept and stored, even of types that never reach the model: bounded.
        limit = state.settings.max_messages
        if isinstance(body.input, list) and len(body.input) > limit:
            raise InvalidRequestError(
                f"input has {len(body.input)} items; at most {limit} are allowed",
                param="input",
                code="too_many_messages",
            )
        self.input_items = _input_items(body.input)
        self.tools = _function_tools(body.tools or [])

    @property
    def stream(self) -> bool:
        return self.body.stream

    @property
    def user(self) -> str | None:
        return self.body.user

    async def load_previous(self) -> None:
        previous = self.body.previous_response_id
        if previous is None:
            return
        stored = await self.state.responses.get(previous, _owner(self.context))
        if stored is None:
            raise NotFoundError(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        if stored.history is None:
            raise InvalidRequestError(
                f"the conversation of response '{previous}' is too long to continue "
                f"(over {HISTORY_LIMIT >> 20} MiB); start a new one",
                param="previous_response_id",
                code="context_length_exceeded",
            )
        self.history = stored.history

    async def prepare(self, caller: Caller) -> Run:
        if self.state.registry.resolve(self.body.model).upstream is not None:
            raise InvalidRequestError(
                f"model '{self.body.model}' is a remote model; /v1/responses serves local "
                "models (use /v1/chat/completions for remote ones)",
                param="model",
            )
        return await self.state.chat.prepare(self.spec(), caller)

    def spec(self) -> GenerationSpec:
        body = self.body
        if body.background:
            raise UnsupportedFeatureError(
                "background responses are not supported", param="background"
            )
        turns: list[Turn] = []
        if body.instructions:
            turns.append(Turn("system", body.instructions))
        turns += _turns(self.history, "previous_response_id")
        turns += _turns(self.input_items, "input")
        if not turns:
            raise InvalidRequestError("input has no messages", param="input")
        return GenerationSpec(
            model=body.model,
            messages=tuple(turns),
            max_tokens=body.max_output_tokens,
            sampling=Sampling(temperature=body.temperature, top_p=body.top_p),
            tools=self.tools,
            tool_choice=_tool_choice(body.tool_choice) if self.tools else None,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            output=_output_format(body),
            template_kwargs=_template_kwargs(body),
            priority=body.priority,
            keep_alive=body.keep_alive_seconds,
            user=body.user,
        )

    # -- whole -------------------------------------------------------------------------------

    async def answer(self, run: Run) -> Response:
        (answer,) = await self.state.chat.answers(run)
        status = "incomplete" if answer.finish_reason == "length" else "completed"
        output: list[dict[str, Any]] = []
        if answer.reasoning:
            output.append(_reasoning(_new_id("rs"), answer.reasoning, "completed"))
        if answer.content or not answer.calls:
            output.append(_message(_new_id("msg"), answer.content or "", status))
        for call in answer.calls:
            output.append(_call(_new_id("fc"), call.id, call.name, call.arguments, "completed"))
        response = self.response(run, output, status)
        await self.keep(response)
        return response

    # -- streamed ----------------------------------------------------------------------------

    def stream_response(self, run: Run, on_close: Callable[[], None]) -> HTTPResponse:
        return named_event_stream(
            self.events(run),
            shutdown_grace=self.state.settings.shutdown_grace,
            on_close=on_close,
        )

    async def events(self, run: Run) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        numbers = itertools.count()

        def event(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
            return kind, {"type": kind, "sequence_number": next(numbers), **fields}

        started = self.response(run, [], "in_progress").model_dump(mode="json")
        yield event("response.created", response=started)
        yield event("response.in_progress", response=started)
        output: list[dict[str, Any]] = []
        open_item: dict[str, Any] | None = None  # the message or call being written
        finish = "stop"

        def close(status: str) -> list[tuple[str, dict[str, Any]]]:
            nonlocal open_item
            item, open_item = open_item, None
            if item is None:
                return []
            index = output.index(item)
            item["status"] = status
            closing = []
            if item["type"] == "message":
                text = item["content"][0]["text"]
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                closing.append(event("response.output_text.done", **where, text=text, logprobs=[]))
                part = {"type": "output_text", "text": text, "annotations": []}
                closing.append(event("response.content_part.done", **where, part=part))
            elif item["type"] == "reasoning":
                text = item["content"][0]["text"]
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                closing.append(event("response.reasoning_text.done", **where, text=text))
                part = {"type": "reasoning_text", "text": text}
                closing.append(event("response.content_part.done", **where, part=part))
            else:
                where = {"item_id": item["id"], "output_index": index}
                arguments = item["arguments"]
                closing.append(
                    event("response.function_call_arguments.done", **where, arguments=arguments)
                )
            closing.append(event("response.output_item.done", output_index=index, item=item))
            return closing

        def open_message(reasoning: bool = False) -> list[tuple[str, dict[str, Any]]]:
            nonlocal open_item
            part: dict[str, Any]
            if reasoning:
                open_item = _reasoning(_new_id("rs"), "", "in_progress")
                part = {"type": "reasoning_text", "text": ""}
            else:
                open_item = _message(_new_id("msg"), "", "in_progress")
                part = {"type": "output_text", "text": "", "annotations": []}
            output.append(open_item)
            index = len(output) - 1
            added = {**open_item, "content": []}
            return [
                event("response.output_item.added", output_index=index, item=added),
                event(
                    "response.content_part.added",
                    item_id=open_item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
            ]

        def write(kind: str, text: str) -> list[tuple[str, dict[str, Any]]]:
            """``text`` added to the open reasoning or message item (opened if need be)."""
            written = []
            if open_item is None or open_item["type"] != kind:
                written += [*close("completed"), *open_message(reasoning=kind == "reasoning")]
            assert open_item is not None
            open_item["content"][0]["text"] += text
            index = output.index(open_item)
            where = {"item_id": open_item["id"], "output_index": index, "content_index": 0}
            if kind == "reasoning":
                written.append(event("response.reasoning_text.delta", **where, delta=text))
            else:
                written.append(
                    event("response.output_text.delta", **where, delta=text, logprobs=[])
                )
            return written

        try:
            async for piece in self.state.chat.events(run):
                for kind, text in (("reasoning", piece.reasoning), ("message", piece.content)):
                    for e in write(kind, text) if text else ():
                        yield e
                for delta in piece.calls:
                    if delta.id is not None:  # a new call
                        for e in close("completed"):
                            yield e
                        open_item = _call(
                            _new_id("fc"), delta.id, delta.name or "", "", "in_progress"
                        )
                        output.append(open_item)
                        yield event(
                            "response.output_item.added",
                            output_index=len(output) - 1,
                            item=dict(open_item),
                        )
                    if delta.arguments and open_item is not None:
                        open_item["arguments"] += delta.arguments
                        yield event(
                            "response.function_call_arguments.delta",
                            item_id=open_item["id"],
                            output_index=output.index(open_item),
                            delta=delta.arguments,
                        )
                if piece.finish_reason is not None:
                    finish = piece.finish_reason
            status = "incomplete" if finish == "length" else "completed"
            if not output:  # nothing was written: an empty message, as a whole answer has
                for e in open_message():
                    yield e
            for e in close(status):
                yield e
            response = self.response(run, output, status)
            await self.keep(response)
            kind = "response.incomplete" if status == "incomplete" else "response.completed"
            yield event(kind, response=response.model_dump(mode="json"))
        except Exception as exc:
            if not isinstance(exc, HearthError):  # a bug: logged, and the stream still ends
                logger.exception("response stream failed")
                exc = HearthError("internal server error", code="server_error")
            for e in close("incomplete"):
                yield e
            failed = self.response(run, output, "failed")
            failed.error = ResponseError(code=exc.code or "server_error", message=exc.message)
            yield event("response.failed", response=failed.model_dump(mode="json"))

    # -- the response object -----------------------------------------------------------------

    def response(self, run: Run, output: list[dict[str, Any]], status: str) -> Response:
        body = self.body
        done = status in ("completed", "incomplete")
        usage = run.usage() if done else None
        text_format = body.text.format if body.text is not None else None
        return Response(
            id=self.id,
            created_at=self.created_at,
            completed_at=int(time.time()) if done else None,
            status=status,
            incomplete_details=(
                IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
            ),
            model=run.model,
            output=output,
            usage=None
            if usage is None
            else ResponseUsage(
                input_tokens=usage.prompt_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=usage.cached_tokens),
                output_tokens=usage.completion_tokens,
                output_tokens_details=OutputTokensDetails(
                    reasoning_tokens=usage.reasoning_tokens or 0
                ),
                total_tokens=usage.total_tokens,
            ),
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            metadata=body.metadata or {},
            parallel_tool_calls=body.parallel_tool_calls is not False,
            previous_response_id=body.previous_response_id,
            reasoning=body.reasoning,
            store=body.store,
            temperature=body.temperature,
            text={
                "format": text_format.model_dump(by_alias=True, exclude_none=True)
                if text_format is not None
                else {"type": "text"}
            },
            tool_choice=body.tool_choice if body.tool_choice is not None else "auto",
            tools=[_tool_echo(t) for t in self.tools],
            top_p=body.top_p,
            truncation=body.truncation or "disabled",
            user=body.user,
        )

    async def keep(self, response: Response) -> None:
        """Store the response (with ``store``), and the conversation it ends, for
        ``previous_response_id``."""
        if not self.body.store:
            return
        dumped = response.model_dump(mode="json")
        history: list[dict[str, Any]] | None = [
            *self.history,
            *self.input_items,
            *dumped["output"],
        ]
        if len(json.dumps(history)) > HISTORY_LIMIT:  # no model's context holds it anyway
            history = None
        try:
            await self.state.responses.put(
                StoredResponse(self.id, _owner(self.context), dumped, self.input_items, history)
            )
        except StoreError as exc:  # the answer still goes out; the failure is loud
            logger.error("%s", exc)


# -- request items -------------------------------------------------------------------------


def _input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as items, each with an id (kept for ``input_items``)."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    items = []
    for i, item in enumerate(value):
        if not isinstance(item.get("id", ""), str) or not isinstance(item.get("type", ""), str):
            raise InvalidRequestError(
                f"input[{i}].id and input[{i}].type must be strings", param=f"input[{i}]"
            )
        kind = item.get("type") or ("message" if "role" in item else "")
        items.append(
            {
                "id": item.get("id") or _new_id("msg" if kind == "message" else "item"),
                **item,
                "type": kind,
            }
        )
    return items


def _turns(items: list[dict[str, Any]], where: str) -> list[Turn]:
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
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"{where} must be text or a list of parts", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(kind, str) and kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise UnsupportedFeatureError(
                f"{where}[{j}] is a part of type {kind!r}; only text parts are supported",
                param=f"{where}[{j}]",
            )
    return "".join(texts)


def _function_tools(tools: list[dict[str, Any]]) -> tuple[FunctionTool, ...]:
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


def _tool_echo(tool: FunctionTool) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict if tool.strict is not None else True,
    }


def _tool_choice(choice: str | dict[str, Any] | None) -> ToolChoice | None:
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


def _template_kwargs(body: ResponseRequest) -> dict[str, Any]:
    effort = (body.reasoning or {}).get("effort")
    return {"reasoning_effort": effort} if isinstance(effort, str) else {}


def _output_format(body: ResponseRequest) -> OutputFormat | None:
    text_format = body.text.format if body.text is not None else None
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return OutputFormat("json_object")
    if text_format.schema_ is None:
        raise InvalidRequestError(
            "text.format of type json_schema needs a schema", param="text.format.schema"
        )
    return OutputFormat("json_schema", text_format.schema_)


# -- output items --------------------------------------------------------------------------


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _reasoning(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def _call(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
