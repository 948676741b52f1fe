"""The token utilities: text to a model's token ids and back."""

from __future__ import annotations

from server.handle import ModelHandle
from server.protocol.tokens import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from server.registry import ModelRegistry
from server.services.chat import ChatService
from server.services.generation import RunLimits, check_token_ids
from server.services.prep import PrepExecutor
from server.services.spec import FunctionTool, Turn
from server.services.tools import plan_tools


class TokenService:
    def __init__(
        self, registry: ModelRegistry, prep: PrepExecutor, chat: ChatService, limits: RunLimits
    ) -> None:
        self._registry = registry
        self._prep = prep
        self._chat = chat
        self._limits = limits

    async def tokenize(
        self,
        request: TokenizeRequest,
        turns: tuple[Turn, ...] | None = None,
        tools: tuple[FunctionTool, ...] = (),
    ) -> TokenizeResponse:
        """``request.text``, or the conversation ``turns`` (``request.messages`` in the
        pipeline's form) with ``tools`` as a chat would render them."""
        if turns is not None:
            self._limits.check_counts(len(turns), len(tools))
        async with self._registry.use(request.model) as handle:
            tokens = await self._prep.run(self._tokenize, request, turns, tools, handle)
        return TokenizeResponse(
            model=handle.name, tokens=tokens, count=len(tokens), max_model_len=handle.n_ctx
        )

    def _tokenize(
        self,
        request: TokenizeRequest,
        turns: tuple[Turn, ...] | None,
        tools: tuple[FunctionTool, ...],
        handle: ModelHandle,
    ) -> list[int]:
        if turns is not None:
            return self._chat.prompt_tokens(
                handle,
                turns,
                plan_tools(tools, None),
                add_generation_prompt=request.add_generation_prompt,
            )
        assert request.text is not None
        add = request.add_special and handle.adds_bos
        return handle.tokenize(request.text, add_special=add, markup=request.parse_special)

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        async with self._registry.use(request.model) as handle:
            check_token_ids(request.tokens, handle.n_vocab, param="tokens")
            text = await self._prep.run(handle.detokenize, request.tokens)
        return DetokenizeResponse(model=handle.name, text=text)
