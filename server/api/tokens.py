"""POST /tokenize and POST /detokenize."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import Context, State
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
async def tokenize(body: TokenizeRequest, state: State, context: Context) -> TokenizeResponse:
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
    return TokenizeResponse(
        model=result.model,
        tokens=result.tokens,
        count=len(result.tokens),
        max_model_len=result.n_ctx,
    )


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, state: State, context: Context) -> DetokenizeResponse:
    model, text = await state.tokens.detokenize(body.model, body.tokens)
    context.model = model
    return DetokenizeResponse(model=model, text=text)
