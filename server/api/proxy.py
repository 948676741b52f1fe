"""Remote models: hand the request to the upstream service and relay its answer."""

from __future__ import annotations

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.api.deps import api_key_of
from server.state import AppState


async def forward_if_remote(
    body: BaseModel, path: str, request: Request, state: AppState
) -> Response | None:
    """The upstream's answer when ``body.model`` is a remote model, else None (serve it here).
    ``path`` is the route below ``/v1``."""
    config = state.registry.resolve(str(getattr(body, "model", "")))
    if config.upstream is None:
        return None
    request.state.model = config.name
    stream = bool(getattr(body, "stream", False))
    payload = body.model_dump(mode="json", exclude_unset=True, by_alias=True)

    def count(prompt: int, completion: int) -> None:
        _count_usage(prompt, completion, config.name, request, state)

    answer = await state.upstream.forward(config, path, payload, stream=stream, on_usage=count)
    if answer.lines is not None:
        return StreamingResponse(answer.lines, media_type="text/event-stream")
    return Response(answer.body, status_code=answer.status, media_type=answer.content_type)


def _count_usage(
    prompt: int, completion: int, model: str, request: Request, state: AppState
) -> None:
    """A remote answer's usage counts in the metrics and against the key's token limit, as a
    local model's does: a whole answer's always, a stream's when the client asked for it."""
    for kind, count in (("prompt", prompt), ("completion", completion)):
        if count > 0:
            state.metrics.tokens.labels(model, kind).inc(count)
    if (key := api_key_of(request)) is not None:
        state.limiter.record_tokens(key, prompt + completion)
