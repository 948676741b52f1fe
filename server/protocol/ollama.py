"""Wire types of Ollama's native API (/api/*) that Hearth reads.

Answers are plain objects built by the adapter (``server/api/ollama``): Ollama's clients read
them leniently, and most fields are only present in some answers. Messages and tools are kept
as plain objects and checked by the adapter, which names the field of any error.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.protocol.anthropic import MAX_STOP_SEQUENCES
from server.protocol.common import (
    MinP,
    OpenAIRequest,
    Penalty,
    RepeatPenalty,
    Seed,
    Temperature,
    TopK,
    TopP,
    WithKeepAlive,
    check_depth,
)
from server.protocol.embeddings import MAX_EMBEDDING_INPUTS


class Options(BaseModel):
    """The ``options`` Hearth honours; the others (``num_gpu``, ``num_thread``, ``mirostat``,
    ...) are set per model in Hearth's config, and ignored here."""

    model_config = ConfigDict(extra="allow")

    temperature: Temperature = None
    top_p: TopP = None
    top_k: TopK = None
    min_p: MinP = None
    # -1: until the context is full (-2 too); a larger value than the context leaves is cut.
    num_predict: int | None = Field(None, ge=-2)
    stop: list[str] | str | None = None
    seed: Seed = None
    repeat_penalty: RepeatPenalty = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    # The context the request may use, at most the model's.
    num_ctx: int | None = Field(None, ge=1)

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, stop: list[str] | str | None) -> list[str] | str | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop strings are allowed")
        return stop

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


Format = Annotated[
    str | dict[str, Any] | None,
    Field(None, description='"json" for any JSON, or a JSON schema the output must match.'),
]
Think = Annotated[
    bool | str | None,
    Field(None, description='Whether a thinking model thinks; "low", "medium" or "high" too.'),
]


class GenerationFields(WithKeepAlive):
    model: str = Field(..., min_length=1)
    format: Format = None
    options: Options | None = None
    stream: bool = True
    think: Think = None

    @field_validator("format")
    @classmethod
    def _format_not_too_deep(cls, value: Any) -> Any:
        return check_depth(value)


class ChatRequest(GenerationFields):
    """POST /api/chat."""

    messages: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    # Not Ollama's (it has none): OpenAI's tool_choice, for clients that must force a call.
    tool_choice: str | dict[str, Any] | None = None

    @field_validator("messages", "tools", "tool_choice")
    @classmethod
    def _not_too_deep(cls, value: Any) -> Any:
        return check_depth(value)


class GenerateRequest(GenerationFields):
    """POST /api/generate."""

    prompt: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False
    suffix: str | None = None
    images: list[str] | None = None
    # The older way to continue a generation; Hearth reuses the KV cache by prefix instead.
    context: list[int] | None = None


class EmbedRequest(WithKeepAlive):
    """POST /api/embed."""

    model: str = Field(..., min_length=1)
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)
    options: Options | None = None

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("input must not be an empty list")
        if len(items) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs are allowed")
        if any(not item for item in items):
            raise ValueError("an input must not be empty")
        return value


class EmbeddingsRequest(WithKeepAlive):
    """POST /api/embeddings (the older, one-prompt form)."""

    model: str = Field(..., min_length=1)
    prompt: str = Field(..., min_length=1)
    options: Options | None = None


class ShowRequest(OpenAIRequest):
    """POST /api/show: ``model`` (older clients send ``name``)."""

    model: str | None = None
    name: str | None = None
    verbose: bool = False


class PullRequest(OpenAIRequest):
    """POST /api/pull: ``model`` (older clients send ``name``); ``insecure`` is accepted and
    ignored (Hearth verifies every layer's digest whatever it says)."""

    model: str | None = Field(None, max_length=512)
    name: str | None = Field(None, max_length=512)
    insecure: bool = False
    stream: bool = True


class DeleteRequest(OpenAIRequest):
    """DELETE /api/delete."""

    model: str | None = Field(None, max_length=512)
    name: str | None = Field(None, max_length=512)


class CopyRequest(OpenAIRequest):
    """POST /api/copy: serve ``source`` under ``destination`` too."""

    source: str = Field(..., min_length=1, max_length=512)
    destination: str = Field(..., min_length=1, max_length=512, pattern=r"^[A-Za-z0-9._:/-]+$")


class CreateRequest(OpenAIRequest):
    """POST /api/create from an uploaded GGUF: ``files`` maps its name to its blob's digest;
    ``parameters`` become the model's sampling defaults (as an Ollama params layer)."""

    model: str | None = Field(None, max_length=512, pattern=r"^[A-Za-z0-9._:/-]+$")
    name: str | None = Field(None, max_length=512, pattern=r"^[A-Za-z0-9._:/-]+$")
    files: dict[str, str] | None = Field(None, max_length=16)
    parameters: dict[str, Any] | None = Field(None, max_length=64)
    template: str | None = None
    system: str | None = None
    stream: bool = True
