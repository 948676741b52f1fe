"""The token utilities: text to a model's token ids and back."""

from __future__ import annotations

import asyncio

from server.errors import InvalidRequestError
from server.protocol.tokens import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from server.registry import ModelRegistry


class TokenService:
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        async with self._registry.use(request.model) as handle:
            add = request.add_special and handle.adds_bos
            tokens = await asyncio.to_thread(handle.tokenize, request.text, add_special=add)
        return TokenizeResponse(
            model=handle.name, tokens=tokens, count=len(tokens), max_model_len=handle.n_ctx
        )

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        async with self._registry.use(request.model) as handle:
            bad = [t for t in request.tokens if not 0 <= t < handle.n_vocab]
            if bad:
                raise InvalidRequestError(
                    f"token ids must be in [0, {handle.n_vocab}); got {bad[:5]}", param="tokens"
                )
            text = await asyncio.to_thread(handle.detokenize, request.tokens)
        return DetokenizeResponse(model=handle.name, text=text)
