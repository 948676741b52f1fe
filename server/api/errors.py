"""The one place errors become each API family's error JSON.

Which family a request speaks follows from its path (:func:`family_of`): Anthropic's
Messages API (``/v1/messages``) answers ``{"type": "error", "error": {"type", "message"}}``,
Ollama's native API (``/api/*``) answers ``{"error": "message"}``, and everything else
OpenAI's ``{"error": {"message", "type", "param", "code"}}``. The status is the same in every
family; only the body differs.

Handlers are looked up by exception class: one on :class:`HearthError` covers the whole tree in
:mod:`server.errors`; request validation becomes 400 (not FastAPI's 422); Starlette's HTTP
errors (unknown route, wrong method, oversized body) keep their status; anything else is a
bug, logged with its traceback and answered with a bare 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import ContextLengthExceededError, HearthError
from server.protocol.common import ErrorResponse

logger = logging.getLogger(__name__)

Family = Literal["openai", "anthropic", "ollama"]

_UNION_TAG = re.compile(r"^(str|int|float|bool|function-.*|\w+\[.*\])$")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
# Anthropic's error types, by status (its documented set; 503 is its "overloaded").
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def family_of(path: str) -> Family:
    """The API family a request path belongs to, for its errors' shape."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path.startswith("/api/"):
        return "ollama"
    return "openai"


def error_body(
    family: Family,
    message: str,
    *,
    status: int,
    error_type: str,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """An error's JSON in ``family``'s form."""
    if family == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else error_type)
        return {"type": "error", "error": {"type": kind, "message": message}}
    if family == "ollama":
        return {"error": message}
    return ErrorResponse.of(message, error_type, param, code).dump()


def error_payload(error: HearthError, family: Family = "openai") -> dict[str, Any]:
    """The JSON of ``error``, also for an error event after a stream has started."""
    return error_body(
        family,
        _family_message(error, family),
        status=error.status_code,
        error_type=error.error_type,
        param=error.param,
        code=error.code,
    )


def _family_message(error: HearthError, family: Family) -> str:
    """A prompt too long for the context, in the words each family's clients look for
    (Claude Code reads Anthropic's "prompt is too long: N tokens > M maximum")."""
    if not isinstance(error, ContextLengthExceededError) or error.limit is None:
        return error.message
    if family == "anthropic":
        if error.prompt_tokens is not None:
            return f"prompt is too long: {error.prompt_tokens} tokens > {error.limit} maximum"
        return f"prompt is too long: more than {error.limit} maximum tokens. {error.message}"
    if family == "ollama":
        return f"the input length exceeds the context length: {error.message}"
    return error.message


def error_response(error: HearthError, path: str = "") -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    body = error_payload(error, family_of(path))
    return JSONResponse(body, status_code=error.status_code, headers=headers)


def _describe_validation(errors: Sequence[Any]) -> tuple[str, str | None]:
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # Union members add their type name to the location; it means nothing to a client.
    loc = [p for p in loc if not _UNION_TAG.match(p)]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('msg')}", None
    if first.get("type") == "missing" and not loc:
        return "the request body is missing: send a JSON object", None
    message = first.get("msg", "invalid request")
    message = message.removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


async def _hearth_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HearthError)
    if exc.status_code >= 500:
        logger.warning("%s: %s", type(exc).__name__, exc.message)
    return error_response(exc, request.url.path)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _describe_validation(exc.errors())
    body = error_body(
        family_of(request.url.path),
        message,
        status=400,
        error_type="invalid_request_error",
        param=param,
        code="invalid_value",
    )
    return JSONResponse(body, status_code=400)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    body = error_body(
        family_of(request.url.path),
        str(exc.detail),
        status=exc.status_code,
        error_type=kind,
        code=_HTTP_CODES.get(exc.status_code),
    )
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    body = error_body(
        family_of(request.url.path),
        "internal server error",
        status=500,
        error_type="server_error",
        code="internal_error",
    )
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HearthError, _hearth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
