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
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi import Response as HTTPResponse
from fastapi.responses import JSONResponse

from server.api.deps import State, context_of
from server.api.openai.response_items import (
    call_item,
    function_tools,
    input_items_of,
    message_item,
    new_id,
    output_format_of,
    reasoning_item,
    template_kwargs_of,
    tool_choice_of,
    tool_echo,
    turns_of,
)
from server.api.openapi_errors import ERROR_RESPONSES, GENERATION_RESPONSES
from server.api.runner import local_model, serve
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
    GenerationSpec,
    Sampling,
    Turn,
)
from server.state import AppState

logger = logging.getLogger(__name__)
router = APIRouter(tags=["responses"])

# The most conversation a stored response keeps for previous_response_id to replay.
HISTORY_LIMIT = 32 << 20


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
    return context.api_key.identity if context.api_key is not None else ""


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")


class ResponsesAdapter:
    def __init__(self, body: ResponseRequest, state: AppState, context: RequestContext) -> None:
        self.body = body
        self.state = state
        self.context = context
        self.id = new_id("resp")
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
        self.input_items = input_items_of(body.input)
        self.tools = function_tools(body.tools or [])

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
        local_model(self.state, self.body.model, "/v1/responses")
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
        turns += turns_of(self.history, "previous_response_id")
        turns += turns_of(self.input_items, "input")
        if not turns:
            raise InvalidRequestError("input has no messages", param="input")
        return GenerationSpec(
            model=body.model,
            messages=tuple(turns),
            messages_param="input",
            max_tokens=body.max_output_tokens,
            sampling=Sampling(temperature=body.temperature, top_p=body.top_p),
            tools=self.tools,
            tool_choice=tool_choice_of(body.tool_choice) if self.tools else None,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            output=output_format_of(body),
            template_kwargs=template_kwargs_of(body),
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
            output.append(reasoning_item(new_id("rs"), answer.reasoning, "completed"))
        if answer.content or not answer.calls:
            output.append(message_item(new_id("msg"), answer.content or "", status))
        for call in answer.calls:
            output.append(call_item(new_id("fc"), call.id, call.name, call.arguments, "completed"))
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
                open_item = reasoning_item(new_id("rs"), "", "in_progress")
                part = {"type": "reasoning_text", "text": ""}
            else:
                open_item = message_item(new_id("msg"), "", "in_progress")
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
                        open_item = call_item(
                            new_id("fc"), delta.id, delta.name or "", "", "in_progress"
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
            tools=[tool_echo(t) for t in self.tools],
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
