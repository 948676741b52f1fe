"""Wire types of Anthropic's Messages API (POST /v1/messages and /v1/messages/count_tokens).

Content blocks are kept as plain objects: clients (Claude Code above all) send many block
types with fields of their own (``cache_control``, ``citations``, ...), and the adapter decides
which it uses, which it drops, and which are a 400 naming the block.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.protocol.common import OpenAIRequest, check_depth

# Anthropic allows many stop sequences; each is checked on every token, so some bound holds.
MAX_STOP_SEQUENCES = 16


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    # Claude Code sends a JSON object encoded as a string here.
    user_id: str | None = Field(None, max_length=512)


class CountTokensRequest(OpenAIRequest):
    """What count_tokens reads: the conversation and tools of a message request."""

    model: str
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None

    @field_validator("messages", "tools", "system", "tool_choice", "thinking")
    @classmethod
    def _not_too_deep(cls, value: Any) -> Any:
        return check_depth(value)


class MessageRequest(CountTokensRequest):
    """POST /v1/messages. ``max_tokens`` is required, as in Anthropic's API."""

    max_tokens: int = Field(..., ge=1)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    stop_sequences: list[str] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    stream: bool = False
    metadata: Metadata | None = None
    # {"effort": "low" | ... | "max", "format": {"type": "json_schema", "schema": {...}}}
    output_config: dict[str, Any] | None = None

    @field_validator("output_config")
    @classmethod
    def _config_not_too_deep(cls, value: Any) -> Any:
        return check_depth(value)


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(BaseModel):
    """The whole answer (and, with empty content, the ``message_start`` event's message)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(BaseModel):
    input_tokens: int
