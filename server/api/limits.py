"""Request body size limit, as raw ASGI middleware so nothing buffers an oversized body first."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import error_body, family_of

# Where models' blobs are uploaded (Ollama's POST /api/blobs/:digest).
UPLOAD_PREFIX = "/api/blobs/"


class BodySizeLimit:
    """Answer 413 when a body is larger than ``max_bytes``: at once when Content-Length says so,
    otherwise as soon as the streamed body passes the limit (FastAPI re-raises an HTTPException
    from body reading, and the error handlers turn it into the API family's error)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_upload_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # A model's blob (POST /api/blobs/:digest) is gigabytes: its own bound.
        self.max_upload_bytes = max_upload_bytes or max_bytes

    def _message(self, limit: int) -> str:
        return f"the request body is larger than the limit of {limit} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"].startswith(UPLOAD_PREFIX) and scope["method"] == "POST"
        limit = self.max_upload_bytes if upload else self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            body = error_body(
                family_of(scope["path"]),
                self._message(limit),
                status=413,
                error_type="invalid_request_error",
                code="payload_too_large",
            )
            await JSONResponse(body, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(status_code=413, detail=self._message(limit))
            return message

        await self.app(scope, limited_receive, send)
