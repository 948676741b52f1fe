"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.api.cancellation import unless_disconnected
from server.api.deps import State, api_key_of
from server.api.proxy import forward_if_remote
from server.api.responses import ERROR_RESPONSES
from server.protocol.embeddings import EmbeddingList, EmbeddingRequest

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings", response_model=EmbeddingList, responses=ERROR_RESPONSES)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, state: State
) -> EmbeddingList | Response:
    if (remote := await forward_if_remote(body, "/embeddings", request, state)) is not None:
        return remote
    result = await unless_disconnected(request, state.embeddings.create(body))
    if isinstance(result, EmbeddingList):
        request.state.model = result.model
        tokens = result.usage.prompt_tokens
        state.metrics.tokens.labels(result.model, "embedding").inc(tokens)
        if (key := api_key_of(request)) is not None:
            state.limiter.record_tokens(key, tokens)
    return result
