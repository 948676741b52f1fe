"""The token utilities: text, or a conversation through the chat template, to a model's
token ids, and token ids back to text."""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.registry import ModelRegistry
from server.services.chat import ChatService
from server.services.generation import RunLimits, check_prompt_length, check_token_ids
from server.services.prep import PrepExecutor
from server.services.spec import FunctionTool, Turn
from server.services.tools import plan_tools


@dataclass(frozen=True)
class Tokenized:
    model: str
    # Four bytes a token, not a list of ints: an answer its client is slow to read holds them.
    tokens: Sequence[int]
    n_ctx: int


class TokenService:
    def __init__(
        self, registry: ModelRegistry, prep: PrepExecutor, chat: ChatService, limits: RunLimits
    ) -> None:
        self._registry = registry
        self._prep = prep
        self._chat = chat
        self._limits = limits

    async def tokenize_text(
        self, model: str, text: str, *, add_special: bool, parse_special: bool
    ) -> Tokenized:
        """``text`` as the model's tokens; special-token text is markup only with
        ``parse_special``. Text longer than the model's context could hold is refused before
        it is tokenized, as a chat's prompt is."""
        async with self._registry.use(model) as handle:
            check_prompt_length(text, handle, param="text")

            def tokenize() -> array[int]:
                add = add_special and handle.adds_bos
                return array("i", handle.tokenize(text, add_special=add, markup=parse_special))

            tokens = await self._prep.run(tokenize)
        return Tokenized(handle.name, tokens, handle.n_ctx)

    async def tokenize_chat(
        self,
        model: str,
        turns: tuple[Turn, ...],
        tools: tuple[FunctionTool, ...] = (),
        *,
        add_generation_prompt: bool = True,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> Tokenized:
        """The conversation with ``tools`` (and the template variables) exactly as a chat
        renders it."""
        self._limits.check_counts(len(turns), len(tools))
        async with self._registry.use(model) as handle:

            def tokenize() -> array[int]:
                plan = plan_tools(tools, None)
                tokens = self._chat.prompt_tokens(
                    handle,
                    turns,
                    plan,
                    add_generation_prompt=add_generation_prompt,
                    extra=template_kwargs,
                )
                return array("i", tokens)

            tokens = await self._prep.run(tokenize)
        return Tokenized(handle.name, tokens, handle.n_ctx)

    async def detokenize(self, model: str, tokens: list[int]) -> tuple[str, str]:
        """The model's name, and the text of ``tokens``."""
        async with self._registry.use(model) as handle:
            check_token_ids(tokens, handle.n_vocab, param="tokens")
            text = await self._prep.run(handle.detokenize, tokens)
        return handle.name, text
