"""POST /tokenize and POST /detokenize."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import State
from server.api.openai.chat import tools_of, turns_of
from server.api.responses import ERROR_RESPONSES
from server.protocol.tokens import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter(tags=["tokens"])


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, state: State) -> TokenizeResponse:
    turns = turns_of(body.messages) if body.messages is not None else None
    return await state.tokens.tokenize(body, turns, tools_of(body.tools))


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, state: State) -> DetokenizeResponse:
    return await state.tokens.detokenize(body)
