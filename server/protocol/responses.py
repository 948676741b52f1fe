"""Wire types of OpenAI's Responses API (POST /v1/responses and its stored responses).

Input items and tools are kept as plain objects here: clients such as Codex CLI send many item
and tool types (hosted tools, custom tools, namespaces), and the adapter decides which it can
use, which it leaves out, and which are a 400 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.protocol.common import (
    KeepAlive,
    MaxTokens,
    OpenAIResponse,
    Temperature,
    TopP,
    WithKeepAlive,
    check_depth,
)


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: TextFormat | None = None


class ResponseRequest(WithKeepAlive):
    model: str
    input: str | list[dict[str, Any]] = Field(
        ..., description="Text, or a list of input items (messages, function calls and outputs)."
    )
    instructions: str | None = None
    max_output_tokens: MaxTokens = None
    temperature: Temperature = None
    top_p: TopP = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None
    prompt_cache_key: str | None = None
    background: bool | None = None
    # Not OpenAI's: a higher priority is admitted first among one client's waiting requests.
    priority: int = Field(0, ge=-1000, le=1000)
    keep_alive: KeepAlive = None

    @field_validator("input", "tools", "tool_choice", "reasoning", "include", "text")
    @classmethod
    def _not_too_deep(cls, value: Any) -> Any:
        if isinstance(value, BaseModel):
            check_depth(value.model_dump())
            return value
        return check_depth(value)


class InputTokensDetails(OpenAIResponse):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(OpenAIResponse):
    reasoning_tokens: int = 0


class ResponseUsage(OpenAIResponse):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(OpenAIResponse):
    code: str
    message: str


class IncompleteDetails(OpenAIResponse):
    reason: Literal["max_output_tokens"]


class Response(OpenAIResponse):
    """A response as OpenAI returns it: output items, usage, and the request's settings."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[dict[str, Any]]
    usage: ResponseUsage | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    user: str | None = None


class ResponseDeleted(OpenAIResponse):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class InputItemList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
