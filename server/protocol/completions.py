"""Wire types of POST /v1/completions."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from server.protocol.common import (
    LogitBias,
    OpenAIRequest,
    OpenAIResponse,
    SamplingFields,
    WithOptionalUsage,
)

FinishReason = Literal["stop", "length"]
Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields, OpenAIRequest):
    model: str
    prompt: Prompt
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    logit_bias: LogitBias = None
    best_of: int | None = Field(None, ge=1)
    parse_special: bool = Field(
        False,
        description="Not OpenAI's: read special-token text in the prompt (`<|im_start|>`) as "
        "the model's control tokens, for prompts written in its chat format. Off, all of the "
        "prompt is plain text.",
    )

    @field_validator("prompt")
    @classmethod
    def _not_empty_list(cls, prompt: Prompt) -> Prompt:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be an empty list")
        if isinstance(prompt, list) and any(isinstance(p, list) and not p for p in prompt):
            raise ValueError("a token-id prompt must not be empty")
        return prompt


class CompletionLogprobs(OpenAIResponse):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(OpenAIResponse):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class Completion(WithOptionalUsage):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
