"""Wire types shared by several endpoints: the request base, usage, errors, stop strings."""

from __future__ import annotations

import logging
import math
import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from server.json_depth import MAX_JSON_DEPTH, nesting_depth

logger = logging.getLogger("hearth.protocol")


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> Any:
    """A field validator's check: ``value`` nests at most ``limit`` deep."""
    if nesting_depth(value) > limit:
        raise ValueError(f"nested more than {limit} deep")
    return value


INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_STOP_STRINGS = 4
MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300


class OpenAIRequest(BaseModel):
    """Base of every request body: unknown OpenAI fields are accepted, logged, and ignored, so a
    client sending a newer field does not break."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_ignored_fields(self) -> OpenAIRequest:
        if self.model_extra:
            logger.debug("ignoring unknown request fields: %s", sorted(self.model_extra))
        return self


class OpenAIResponse(BaseModel):
    """Base of every response body."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class PromptTokensDetails(OpenAIResponse):
    cached_tokens: int = 0


class CompletionTokensDetails(OpenAIResponse):
    reasoning_tokens: int = 0


class Usage(OpenAIResponse):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()
    # Only for models whose thinking is split from their answer.
    completion_tokens_details: CompletionTokensDetails | None = None

    @model_serializer(mode="wrap")
    def _details_when_known(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("completion_tokens_details") is None:
            data.pop("completion_tokens_details", None)
        return data


class WithOptionalUsage(OpenAIResponse):
    """A response whose ``usage`` is left out of the JSON when there is none (stream chunks)."""

    usage: Usage | None = None

    @model_serializer(mode="wrap")
    def _usage_only_when_sent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        usage = data.pop("usage", None)
        if usage is not None:
            data["usage"] = usage  # last, where OpenAI puts it
        return data


Temperature = Annotated[float | None, Field(None, ge=0, le=2)]
TopP = Annotated[float | None, Field(None, ge=0, le=1)]
TopK = Annotated[int | None, Field(None, ge=0, le=2**31 - 1)]
MinP = Annotated[float | None, Field(None, ge=0, le=1)]
Penalty = Annotated[float | None, Field(None, ge=-2, le=2)]
RepeatPenalty = Annotated[float | None, Field(None, gt=0, le=2)]
Seed = Annotated[int | None, Field(None, ge=INT64_MIN, le=INT64_MAX)]
MaxTokens = Annotated[int | None, Field(None, ge=1)]
Choices = Annotated[int, Field(1, ge=1, le=MAX_CHOICES)]
LogitBias = Annotated[
    dict[str, Annotated[float, Field(ge=-100, le=100)]] | None,
    Field(
        None,
        description="Token id (as a string) to a bias from -100 (ban) to 100 (force), "
        f"added to its logit; at most {MAX_LOGIT_BIAS} entries.",
        max_length=MAX_LOGIT_BIAS,
    ),
]
Stop = Annotated[
    str | list[str] | None,
    Field(None, description=f"Up to {MAX_STOP_STRINGS} strings that end the output, not included."),
]


# One "<number><unit>" part of a duration; Go's form chains them ("1h30m", "5m0s").
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)?")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MAX_DURATION_CHARS = 64
# Longer than this is "for good": a model kept ten years is kept, and no date overflows.
KEEP_ALIVE_FOREVER = 10 * 365 * 86_400.0


def parse_keep_alive(value: float | str | None) -> float | None:
    """Ollama's keep_alive: seconds, or a duration such as "5m", "90s", "1h30m"; negative
    (or longer than ten years) keeps the model loaded for good."""
    if value is None:
        return None
    seconds = _duration_seconds(value) if isinstance(value, str) else float(value)
    if not math.isfinite(seconds):
        raise ValueError("keep_alive must be a finite number of seconds")
    return -1.0 if seconds > KEEP_ALIVE_FOREVER else seconds


def _duration_seconds(text: str) -> float:
    problem = ValueError("keep_alive must be seconds or a duration such as '5m', '30s', '1h30m'")
    compact = "".join(text.split()) if len(text) <= _MAX_DURATION_CHARS else ""
    sign = -1.0 if compact.startswith("-") else 1.0
    compact = compact.removeprefix("-")
    if not compact:
        raise problem
    total, position = 0.0, 0
    while position < len(compact):
        part = _DURATION_PART.match(compact, position)
        if part is None or (part.group(2) is None and (position or part.end() < len(compact))):
            raise problem  # a bare number only as the whole value (seconds)
        total += float(part.group(1)) * _UNIT_SECONDS[part.group(2) or "s"]
        position = part.end()
    return sign * total


KeepAlive = Annotated[
    float | str | None,
    Field(
        None,
        description="Not OpenAI's (Ollama's): how long the model stays loaded after this "
        "request, in seconds or as '5m', '1h'; negative keeps it loaded.",
    ),
]


class WithKeepAlive(OpenAIRequest):
    keep_alive: KeepAlive = None

    @field_validator("keep_alive")
    @classmethod
    def _valid_duration(cls, value: float | str | None) -> float | str | None:
        parse_keep_alive(value)
        return value

    @property
    def keep_alive_seconds(self) -> float | None:
        return parse_keep_alive(self.keep_alive)


class SamplingFields(WithKeepAlive):
    """The sampling and length fields chat and text completions share."""

    max_tokens: MaxTokens = None
    temperature: Temperature = None
    top_p: TopP = None
    top_k: TopK = None
    min_p: MinP = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    repeat_penalty: RepeatPenalty = None
    seed: Seed = None
    stop: Stop = None
    n: Choices = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Not OpenAI's: a higher priority is admitted first among waiting requests.
    priority: int = Field(0, ge=-1000, le=1000)
    # Not OpenAI's: false turns prompt-lookup speculation off for this request.
    speculative: bool = True

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        return stop

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(
        cls, options: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if options is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return options

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """``{"error": {...}}``, as OpenAI sends it."""

    error: ErrorBody

    @classmethod
    def of(
        cls, message: str, type_: str, param: str | None = None, code: str | None = None
    ) -> ErrorResponse:
        return cls(error=ErrorBody(message=message, type=type_, param=param, code=code))

    def dump(self) -> dict[str, Any]:
        return self.model_dump()
