"""POST /tokenize and POST /detokenize."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from server.api.deps import Context, State
from server.api.openai.chat import tools_of, turns_of
from server.api.openapi_errors import ERROR_RESPONSES
from server.protocol.tokens import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from server.services.tokens import Tokenized

router = APIRouter(tags=["tokens"])


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, state: State, context: Context) -> StreamingResponse:
    if body.messages is not None:
        result = await state.tokens.tokenize_chat(
            body.model,
            turns_of(body.messages),
            tools_of(body.tools),
            add_generation_prompt=body.add_generation_prompt,
        )
    else:
        assert body.text is not None
        result = await state.tokens.tokenize_text(
            body.model, body.text, add_special=body.add_special, parse_special=body.parse_special
        )
    context.model = result.model
    return StreamingResponse(_tokenize_response(result), media_type="application/json")


# Token ids in one piece of a /tokenize answer. Each piece is handed over only once uvicorn's
# write buffer has room, so an answer its client does not read holds the token ids alone,
# never their whole JSON as well.
_IDS_PER_PIECE = 8192


async def _tokenize_response(result: Tokenized) -> AsyncIterator[bytes]:
    """:class:`TokenizeResponse`'s JSON for ``result``, a piece at a time."""
    tokens = result.tokens
    yield b'{"model":' + json.dumps(result.model).encode() + b',"tokens":['
    for start in range(0, len(tokens), _IDS_PER_PIECE):
        ids = ",".join(map(str, tokens[start : start + _IDS_PER_PIECE])).encode()
        yield b"," + ids if start else ids
    yield f'],"count":{len(tokens)},"max_model_len":{result.n_ctx}}}'.encode()


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, state: State, context: Context) -> DetokenizeResponse:
    model, text = await state.tokens.detokenize(body.model, body.tokens)
    context.model = model
    return DetokenizeResponse(model=model, text=text)
