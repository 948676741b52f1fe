"""What every route may answer besides success, for the OpenAPI document.

Declaring the error statuses (all ``{"error": {...}}`` objects) and the SSE form of streamed
responses keeps ``/openapi.json`` true, so that clients generated from it, and the schemathesis
run in the tests, know every answer the server gives.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from server.protocol.common import ErrorResponse

_ERROR_STATUSES = {
    400: "The request is invalid (the error's `param` names the field).",
    401: "No API key, or an invalid one (when keys are configured).",
    404: "The model (or route) does not exist.",
    413: "The request body is larger than max_body_bytes.",
    429: "The model's queue is full, or the API key is over a limit; retry after Retry-After "
    "seconds.",
    500: "An internal error.",
    502: "A remote model's upstream server failed or could not be reached.",
    503: "The model cannot load, the server is shutting down, or the request waited in the "
    "queue past queue_timeout.",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in _ERROR_STATUSES.items()
}

# Before OpenAPI 3.2, the schema of an event stream describes each event.
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "description": "A chunk as JSON (the same object as the non-streamed response, "
            'with `"object"` ending in `.chunk` for chat), an `{"error": ...}` object after a '
            "failure, or `[DONE]`, which ends every stream.",
        },
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}

# Generation may also end with 408 (request_timeout) or 499 (the client went away).
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    408: {"model": ErrorResponse, "description": "The request ran past request_timeout."},
    200: {
        "description": "The completion, or with `stream: true` a stream of Server-Sent Events "
        "whose data are chunks, ending with `data: [DONE]`.",
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    },
}


class _AnthropicErrorBody(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """``{"type": "error", "error": {"type", "message"}}``, as Anthropic sends it."""

    type: Literal["error"] = "error"
    error: _AnthropicErrorBody


class OllamaError(BaseModel):
    """``{"error": "message"}``, as Ollama sends it."""

    error: str


ANTHROPIC_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": AnthropicError, "description": description}
    for status, description in {
        **_ERROR_STATUSES,
        408: "The request ran past request_timeout.",
    }.items()
}
ANTHROPIC_GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ANTHROPIC_ERROR_RESPONSES,
    200: {
        "description": "The message, or with `stream: true` Anthropic's stream of named "
        "events (message_start ... message_stop, or error).",
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    },
}
OLLAMA_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OllamaError, "description": description}
    for status, description in {
        **_ERROR_STATUSES,
        408: "The request ran past request_timeout.",
    }.items()
}
OLLAMA_GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **OLLAMA_ERROR_RESPONSES,
    200: {
        "description": "One object, or by default NDJSON: one object a line, the last with "
        '`"done": true` (or `{"error": ...}` after a failure).',
        "content": {"application/x-ndjson": {"schema": {"type": "object"}}},
    },
}
