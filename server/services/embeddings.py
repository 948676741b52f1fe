"""OpenAI embeddings: inputs to token lists, pooled vectors, unit length, float or base64."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from typing import Any

from server.errors import ContextLengthExceededError, InvalidRequestError
from server.handle import ModelHandle
from server.metrics import RunRecord
from server.protocol.embeddings import (
    Embedding,
    EmbeddingInput,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from server.registry import ModelRegistry
from server.services.generation import Caller, check_prompt_length, check_token_ids
from server.services.prep import PrepExecutor


class EmbeddingService:
    def __init__(self, registry: ModelRegistry, prep: PrepExecutor) -> None:
        self._registry = registry
        self._prep = prep

    async def create(self, request: EmbeddingRequest, caller: Caller) -> EmbeddingList:
        async with self._registry.use(
            request.model,
            keep_alive=request.keep_alive_seconds,
            may_shorten=caller.may_shorten_keep_alive,
        ) as handle:
            return await self._create(request, handle, caller)

    async def _create(
        self, request: EmbeddingRequest, handle: ModelHandle, caller: Caller
    ) -> EmbeddingList:
        if request.dimensions is not None and request.dimensions > handle.n_embd:
            raise InvalidRequestError(
                f"dimensions must be at most {handle.n_embd} for model '{handle.name}'",
                param="dimensions",
            )
        if not handle.config.embeddings:
            raise InvalidRequestError(
                f"model '{handle.name}' does not serve embeddings (embeddings = false in its "
                "config)",
                param="model",
            )
        inputs = await self._prep.run(_tokenized_inputs, handle, request.input)
        tokens = sum(len(i) for i in inputs)
        if caller.ledger is not None:  # counted before the work: over the limit is a 429
            caller.ledger.meter(tokens)
        vectors = await handle.embed(inputs)
        data = []
        for index, vector in enumerate(vectors):
            values = _unit(vector[: request.dimensions] if request.dimensions else vector)
            encoded: list[float] | str = values
            if request.encoding_format == "base64":
                packed = struct.pack(f"<{len(values)}f", *values)
                encoded = base64.b64encode(packed).decode("ascii")
            data.append(Embedding(index=index, embedding=encoded))
        if caller.ledger is not None:
            caller.ledger.record(RunRecord(model=handle.name, embedded_tokens=tokens))
        return EmbeddingList(
            data=data,
            model=handle.name,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )


def _tokenized_inputs(handle: ModelHandle, value: EmbeddingInput) -> list[list[int]]:
    items: list[Any] = [value] if isinstance(value, str) or isinstance(value[0], int) else value
    inputs: list[list[int]] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            check_prompt_length(item, handle, param="input")
            tokens = handle.tokenize(item, add_special=handle.adds_bos)
        else:
            tokens = list(item)
            check_token_ids(tokens, handle.n_vocab, param="input")
        if len(tokens) > handle.n_ctx:
            raise ContextLengthExceededError(
                f"input {i} has {len(tokens)} tokens; model '{handle.name}' embeds at most "
                f"{handle.n_ctx}",
                param="input",
            )
        if not tokens:
            raise InvalidRequestError(f"input {i} is empty", param="input")
        inputs.append(tokens)
    return inputs


def _unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)
