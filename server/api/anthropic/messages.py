"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens.

An adapter over the one pipeline, like OpenAI's chat: the conversation becomes turns, client
tools the same tool grammar chat uses, and the pipeline's thinking, text and tool calls come
back as content blocks, whole or as Anthropic's event stream. Errors on these routes are
Anthropic's error objects (``server.api.errors`` chooses the form by path).

The stream is chosen by the body's ``stream``, not by ``Accept``: Claude Code asks for JSON
and reads SSE.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import AsyncGenerator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi import Response as HTTPResponse

from server.api.anthropic.convert import (
    conversation,
    function_tools,
    output_format,
    template_kwargs,
    tool_choice,
    tool_input,
)
from server.api.deps import Context, State
from server.api.errors import error_payload
from server.api.openapi_errors import ANTHROPIC_ERROR_RESPONSES, ANTHROPIC_GENERATION_RESPONSES
from server.api.runner import local_model, serve
from server.api.sse import named_event_stream
from server.errors import HearthError
from server.protocol.anthropic import (
    CountTokensRequest,
    Message,
    MessageRequest,
    StopReason,
    TokenCount,
    Usage,
)
from server.services.chat_output import ChatFinish
from server.services.generation import Caller, Run, RunUsage
from server.services.spec import GenerationSpec, Sampling
from server.state import AppState

logger = logging.getLogger(__name__)
router = APIRouter(tags=["anthropic"])


@router.post("/v1/messages", response_model=Message, responses=ANTHROPIC_GENERATION_RESPONSES)
async def create_message(body: MessageRequest, request: Request, state: State) -> Any:
    return await serve(MessagesAdapter(body, state), request, state)


@router.post(
    "/v1/messages/count_tokens", response_model=TokenCount, responses=ANTHROPIC_ERROR_RESPONSES
)
async def count_tokens(body: CountTokensRequest, state: State, context: Context) -> TokenCount:
    local_model(state, body.model, "/v1/messages")
    keep = state.settings.keep_billing_header
    choice, _ = tool_choice(body.tool_choice)
    tools = function_tools(body.tools) if choice is None or choice.mode != "none" else ()
    kwargs = template_kwargs(body.thinking, None)
    result = await state.tokens.tokenize_chat(
        body.model, tuple(conversation(body, keep)), tools, template_kwargs=kwargs
    )
    context.model = result.model
    return TokenCount(input_tokens=len(result.tokens))


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def stop_reason(finish: ChatFinish, stop_sequence: str | None) -> StopReason:
    if finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def usage_of(usage: RunUsage) -> Usage:
    """Anthropic counts prompt tokens read from the cache apart from ``input_tokens``."""
    return Usage(
        input_tokens=usage.prompt_tokens - usage.cached_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_input_tokens=usage.cached_tokens,
    )


class MessagesAdapter:
    def __init__(self, body: MessageRequest, state: AppState) -> None:
        self.body = body
        self.state = state
        self.id = _new_id("msg")

    @property
    def stream(self) -> bool:
        return self.body.stream

    @property
    def user(self) -> str | None:
        return self.body.metadata.user_id if self.body.metadata is not None else None

    async def prepare(self, caller: Caller) -> Run:
        local_model(self.state, self.body.model, "/v1/messages")
        return await self.state.chat.prepare(self.spec(), caller)

    def spec(self) -> GenerationSpec:
        body = self.body
        choice, parallel = tool_choice(body.tool_choice)
        tools = function_tools(body.tools)
        return GenerationSpec(
            model=body.model,
            messages=tuple(conversation(body, self.state.settings.keep_billing_header)),
            max_tokens=body.max_tokens,
            clamp_max_tokens=True,
            sampling=Sampling(
                temperature=body.temperature,
                top_p=body.top_p,
                top_k=body.top_k,
                stop=tuple(body.stop_sequences or ()),
            ),
            tools=tools,
            tool_choice=choice if tools else None,
            parallel_tool_calls=parallel,
            output=output_format(body.output_config),
            template_kwargs=template_kwargs(body.thinking, body.output_config),
            user=self.user,
        )

    async def answer(self, run: Run) -> Message:
        (answer,) = await self.state.chat.answers(run)
        content: list[dict[str, Any]] = []
        if answer.reasoning:
            content.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
        if answer.content or not answer.calls:
            content.append({"type": "text", "text": answer.content or ""})
        for call in answer.calls:
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": tool_input(call.arguments),
                }
            )
        return Message(
            id=self.id,
            model=run.model,
            content=content,
            stop_reason=stop_reason(answer.finish_reason, answer.stop_sequence),
            stop_sequence=answer.stop_sequence,
            usage=usage_of(run.usage()),
        )

    def stream_response(self, run: Run, on_close: Callable[[], None]) -> HTTPResponse:
        return named_event_stream(
            self.events(run), shutdown_grace=self.state.settings.shutdown_grace, on_close=on_close
        )

    async def events(self, run: Run) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """Anthropic's event stream: the message, then each content block opened, filled
        with deltas and closed, then the stop reason with the usage. An error after the start
        is an ``error`` event, and the stream ends."""
        started = Message(
            id=self.id,
            model=run.model,
            content=[],
            usage=Usage(input_tokens=run.prompt_token_count, output_tokens=0),
        )
        yield "message_start", {"type": "message_start", "message": started.model_dump()}
        yield "ping", {"type": "ping"}
        blocks = itertools.count()
        index = -1
        open_kind: str | None = None  # "thinking", "text" or "tool_use"

        def close() -> list[tuple[str, dict[str, Any]]]:
            nonlocal open_kind
            if open_kind is None:
                return []
            open_kind = None
            return [("content_block_stop", {"type": "content_block_stop", "index": index})]

        def start(kind: str, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
            nonlocal open_kind, index
            events = close()
            open_kind, index = kind, next(blocks)
            started = {"type": "content_block_start", "index": index, "content_block": block}
            return [*events, ("content_block_start", started)]

        def delta(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            return "content_block_delta", {
                "type": "content_block_delta",
                "index": index,
                "delta": payload,
            }

        finish: ChatFinish = "stop"
        stop_sequence: str | None = None
        try:
            async for piece in self.state.chat.events(run):
                if piece.reasoning:
                    if open_kind != "thinking":
                        for event in start(
                            "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                        ):
                            yield event
                    yield delta({"type": "thinking_delta", "thinking": piece.reasoning})
                if piece.content:
                    if open_kind != "text":
                        for event in start("text", {"type": "text", "text": ""}):
                            yield event
                    yield delta({"type": "text_delta", "text": piece.content})
                for call in piece.calls:
                    if call.id is not None:
                        block = {"type": "tool_use", "id": call.id, "name": call.name or ""}
                        for event in start("tool_use", {**block, "input": {}}):
                            yield event
                    if call.arguments and open_kind == "tool_use":
                        yield delta({"type": "input_json_delta", "partial_json": call.arguments})
                if piece.finish_reason is not None:
                    finish, stop_sequence = piece.finish_reason, piece.stop_sequence
            if index < 0:  # nothing was written: one empty text block, as a whole answer has
                for event in start("text", {"type": "text", "text": ""}):
                    yield event
            for event in close():
                yield event
            yield (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop_reason(finish, stop_sequence),
                        "stop_sequence": stop_sequence,
                    },
                    "usage": usage_of(run.usage()).model_dump(),
                },
            )
            yield "message_stop", {"type": "message_stop"}
        except Exception as exc:
            if not isinstance(exc, HearthError):
                logger.exception("stream failed")
                exc = HearthError("internal server error", code="internal_error")
            yield "error", error_payload(exc, "anthropic")
