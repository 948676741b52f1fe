"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from server.api.cancellation import unless_disconnected
from server.api.deps import State, caller_of, track
from server.api.proxy import forward_if_remote
from server.api.responses import GENERATION_RESPONSES
from server.api.sse import sse_response
from server.protocol.chat import ChatCompletion, ChatCompletionRequest
from server.services.generation import submit

router = APIRouter(tags=["chat"])


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=GENERATION_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, state: State
) -> ChatCompletion | EventSourceResponse | Response:
    if (remote := await forward_if_remote(body, "/chat/completions", request, state)) is not None:
        return remote
    run = await state.chat.prepare(body, caller_of(request, body.user))
    track(run, request, state)
    if body.stream:
        submit(run)  # a full queue is a 429 here, not an error event in a 200 stream
        return sse_response(
            state.chat.stream(run, include_usage=body.include_usage),
            shutdown_grace=state.settings.shutdown_grace,
        )
    return await unless_disconnected(request, state.chat.complete(run))
