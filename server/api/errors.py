"""The one place errors become OpenAI error JSON.

Handlers are looked up by exception class: one on :class:`HearthError` covers the whole tree in
:mod:`server.errors`; request validation becomes 400 (not FastAPI's 422); Starlette's HTTP
errors (unknown route, wrong method, oversized body) keep their status in OpenAI form; anything
else is a bug, logged with its traceback and answered with a bare 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import HearthError
from server.protocol.common import ErrorResponse

logger = logging.getLogger(__name__)

_UNION_TAG = re.compile(r"^(str|int|float|bool|function-.*|\w+\[.*\])$")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def error_response(error: HearthError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    body = ErrorResponse.of(error.message, error.error_type, error.param, error.code)
    return JSONResponse(body.dump(), status_code=error.status_code, headers=headers)


def error_payload(error: HearthError) -> dict[str, Any]:
    """The JSON of ``error``, for an SSE ``error`` event after a stream has started."""
    return ErrorResponse.of(error.message, error.error_type, error.param, error.code).dump()


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


async def _hearth_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HearthError)
    if exc.status_code >= 500:
        logger.warning("%s: %s", type(exc).__name__, exc.message)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = _describe_validation(exc.errors())
    body = ErrorResponse.of(message, "invalid_request_error", param, "invalid_value")
    return JSONResponse(body.dump(), status_code=400)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    body = ErrorResponse.of(str(exc.detail), kind, None, _HTTP_CODES.get(exc.status_code))
    return JSONResponse(body.dump(), status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    body = ErrorResponse.of("internal server error", "server_error", None, "internal_error")
    return JSONResponse(body.dump(), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HearthError, _hearth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
