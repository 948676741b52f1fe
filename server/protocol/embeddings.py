"""Wire types of POST /v1/embeddings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from server.protocol.common import OpenAIResponse, WithKeepAlive

MAX_EMBEDDING_INPUTS = 2048

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(WithKeepAlive):
    model: str
    input: EmbeddingInput = Field(
        ...,
        description=f"A string, up to {MAX_EMBEDDING_INPUTS} strings, token ids, or lists of "
        "token ids.",
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        None, ge=1, description="Keep the first N dimensions, renormalized to unit length."
    )
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: EmbeddingInput) -> EmbeddingInput:
        items: list[Any] = [value] if isinstance(value, str) or _is_token_list(value) else value
        if not items:
            raise ValueError("input must not be an empty list")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs are allowed")
        if any(len(item) == 0 for item in items):
            raise ValueError("an input must not be empty")
        return value


def _is_token_list(value: EmbeddingInput) -> bool:
    return bool(value) and isinstance(value[0], int)


class Embedding(OpenAIResponse):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64 of little-endian float32 when asked for


class EmbeddingUsage(OpenAIResponse):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
