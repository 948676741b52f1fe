"""Ollama reads every request body as JSON, whatever its Content-Type: its own examples use
``curl -d '{...}'``, which sends ``application/x-www-form-urlencoded``. FastAPI parses only
JSON-typed bodies as JSON, so on /api/* the header is made to say what the body is."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class JsonBodies:
    """Raw ASGI: requests under /api/ carry ``Content-Type: application/json``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
