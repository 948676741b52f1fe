"""Embeddings: inputs to token lists, pooled vectors of unit length (the adapter encodes
them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from server.errors import ContextLengthExceededError, InvalidRequestError
from server.loaded_model import ModelHandle
from server.metrics import RunRecord
from server.registry import ModelRegistry
from server.services.generation import Caller, check_prompt_length, check_token_ids
from server.services.prep import PrepExecutor

# Text, texts, token ids, or lists of token ids.
EmbeddingInput = str | list[str] | list[int] | list[list[int]]


@dataclass(frozen=True)
class EmbeddingSpec:
    model: str
    input: EmbeddingInput
    # Keep the first N dimensions (renormalized); None: all.
    dimensions: int | None = None
    keep_alive: float | None = None
    # An input longer than the model's context is cut to fit (Ollama's ``truncate``), not a 400.
    truncate: bool = False


@dataclass(frozen=True)
class Embeddings:
    model: str
    vectors: list[list[float]]  # unit length, one per input, in input order
    tokens: int  # input tokens, all inputs together


class EmbeddingService:
    def __init__(self, registry: ModelRegistry, prep: PrepExecutor) -> None:
        self._registry = registry
        self._prep = prep

    async def create(self, spec: EmbeddingSpec, caller: Caller) -> Embeddings:
        async with self._registry.use(
            spec.model, keep_alive=spec.keep_alive, may_shorten=caller.may_shorten_keep_alive
        ) as handle:
            return await self._create(spec, handle, caller)

    async def _create(self, spec: EmbeddingSpec, handle: ModelHandle, caller: Caller) -> Embeddings:
        if spec.dimensions is not None and spec.dimensions > handle.n_embd:
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
        inputs = await self._prep.run(_tokenized_inputs, handle, spec.input, spec.truncate)
        tokens = sum(len(i) for i in inputs)
        if caller.ledger is not None:  # counted before the work; a 429 here costs nothing
            caller.ledger.check(tokens)
            caller.ledger.meter(tokens)
        vectors = await handle.embed(inputs)
        if caller.ledger is not None:
            caller.ledger.record(RunRecord(model=handle.name, embedded_tokens=tokens))
        keep = spec.dimensions
        return Embeddings(handle.name, [_unit(v[:keep] if keep else v) for v in vectors], tokens)


def _tokenized_inputs(
    handle: ModelHandle, value: EmbeddingInput, truncate: bool = False
) -> list[list[int]]:
    single = isinstance(value, str) or isinstance(value[0], int)
    items: list[str | list[int]] = [value] if single else list(value)  # type: ignore[list-item,arg-type]
    inputs: list[list[int]] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            check_prompt_length(item, handle, param="input")
            tokens = handle.tokenize(item, add_special=handle.adds_bos)
        else:
            tokens = list(item)
            check_token_ids(tokens, handle.n_vocab, param="input")
        if len(tokens) > handle.n_ctx and truncate:
            tokens = tokens[: handle.n_ctx]
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
