"""POST /v1/embeddings: OpenAI's embeddings wire format over the embedding service."""

from __future__ import annotations

import base64
import struct

from fastapi import APIRouter, Request, Response

from server.api.cancellation import unless_disconnected
from server.api.deps import Context, State, caller_of
from server.api.openai.proxy import forward_if_remote
from server.api.openapi_errors import ERROR_RESPONSES
from server.protocol.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from server.services.embeddings import Embeddings, EmbeddingSpec

router = APIRouter(tags=["embeddings"])


@router.post("/v1/embeddings", response_model=EmbeddingList, responses=ERROR_RESPONSES)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, state: State, context: Context
) -> EmbeddingList | Response:
    if (remote := await forward_if_remote(body, "/embeddings", request, state)) is not None:
        return remote
    spec = EmbeddingSpec(body.model, body.input, body.dimensions, body.keep_alive_seconds)
    caller = caller_of(context, state, body.user)
    result = await unless_disconnected(request, state.embeddings.create(spec, caller))
    if isinstance(result, Response):
        return result
    context.model = result.model
    return embedding_list(result, body.encoding_format == "base64")


def embedding_list(result: Embeddings, as_base64: bool) -> EmbeddingList:
    """The vectors as floats, or as base64 of little-endian float32, as OpenAI sends them."""
    data = []
    for index, values in enumerate(result.vectors):
        encoded: list[float] | str = values
        if as_base64:
            packed = struct.pack(f"<{len(values)}f", *values)
            encoded = base64.b64encode(packed).decode("ascii")
        data.append(Embedding(index=index, embedding=encoded))
    return EmbeddingList(
        data=data,
        model=result.model,
        usage=EmbeddingUsage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )
