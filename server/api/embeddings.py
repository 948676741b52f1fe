"""POST /v1/embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from server.api.cancellation import unless_disconnected
from server.api.deps import Context, State, caller_of
from server.api.proxy import forward_if_remote
from server.api.responses import ERROR_RESPONSES
from server.protocol.embeddings import EmbeddingList, EmbeddingRequest

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings", response_model=EmbeddingList, responses=ERROR_RESPONSES)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, state: State, context: Context
) -> EmbeddingList | Response:
    if (remote := await forward_if_remote(body, "/embeddings", request, state)) is not None:
        return remote
    caller = caller_of(context, state, body.user)
    return await unless_disconnected(request, state.embeddings.create(body, caller))
