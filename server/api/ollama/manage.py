"""Ollama's model management: ``POST /api/pull`` (streamed progress, as Ollama writes it),
``DELETE /api/delete``, ``POST /api/copy``, ``HEAD``/``POST /api/blobs/:digest`` and ``POST
/api/create`` from an uploaded GGUF. With API keys on, only an admin key may use them; with
keys off, no other site's page may. The work is
:class:`server.services.model_store.ModelStore`'s."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response

from server.api.deps import State, context_of
from server.api.ndjson import ndjson_response
from server.api.openapi_errors import OLLAMA_ERROR_RESPONSES
from server.errors import InvalidRequestError, PermissionDeniedError, UnsupportedFeatureError
from server.protocol.ollama import CopyRequest, CreateRequest, DeleteRequest, PullRequest

router = APIRouter(tags=["ollama"])


def _admin_only(request: Request) -> None:
    """With keys on, an admin key. With keys off (one user's machine), no request a web page
    of another site sent: its ``Origin`` must be this server (a browser sends a plain-text
    POST from any page without asking first, and these bodies are read as JSON whatever
    their type)."""
    key = context_of(request).api_key
    if key is not None and not key.admin:
        raise PermissionDeniedError("managing models needs an admin key")
    origin = request.headers.get("origin")
    host = request.headers.get("host", "").lower()
    if key is None and origin is not None and urlsplit(origin).netloc.lower() != host:
        raise PermissionDeniedError("another site's page may not manage models")


def _model_of(body: PullRequest | DeleteRequest | CreateRequest) -> str:
    name = body.model or body.name
    if not name:
        raise InvalidRequestError("`model` is required", param="model")
    return name


async def _streamed(
    lines: AsyncIterator[dict[str, Any]], stream: bool
) -> Response | dict[str, Any]:
    """Ollama's progress lines, or with ``stream`` false the last one. An error before the
    first line is answered with its status; after it, as a last ``{"error": ...}`` line."""
    if stream:
        first = await anext(lines)

        async def relay() -> AsyncGenerator[dict[str, Any], None]:
            yield first
            async for line in lines:
                yield line

        return ndjson_response(relay(), on_close=lambda: None)
    last: dict[str, Any] = {}
    async for line in lines:  # an error raises, and is answered with its status
        last = line
    return last


@router.post("/api/pull", response_model=None, responses=OLLAMA_ERROR_RESPONSES)
async def pull(body: PullRequest, request: Request, state: State) -> Any:
    _admin_only(request)
    return await _streamed(state.model_store.pull(_model_of(body)), body.stream)


@router.delete("/api/delete", response_model=None, responses=OLLAMA_ERROR_RESPONSES)
async def delete(body: DeleteRequest, request: Request, state: State) -> Response:
    _admin_only(request)
    await state.model_store.delete(_model_of(body))
    return Response(status_code=200)


@router.post("/api/copy", response_model=None, responses=OLLAMA_ERROR_RESPONSES)
async def copy(body: CopyRequest, request: Request, state: State) -> Response:
    _admin_only(request)
    await state.model_store.copy(body.source, body.destination)
    return Response(status_code=200)


@router.head("/api/blobs/{digest}", response_model=None)
async def has_blob(digest: str, request: Request, state: State) -> Response:
    _admin_only(request)
    return Response(status_code=200 if state.model_store.has_blob(digest) else 404)


@router.post("/api/blobs/{digest}", response_model=None, responses=OLLAMA_ERROR_RESPONSES)
async def put_blob(digest: str, request: Request, state: State) -> Response:
    _admin_only(request)
    if state.model_store.has_blob(digest):
        return Response(status_code=200)
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else None
    await state.model_store.put_blob(digest, request.stream(), size)
    return Response(status_code=201)


@router.post("/api/create", response_model=None, responses=OLLAMA_ERROR_RESPONSES)
async def create(body: CreateRequest, request: Request, state: State) -> Any:
    _admin_only(request)
    for field in ("template", "system"):
        if getattr(body, field):
            raise UnsupportedFeatureError(
                f"{field}: a created model takes its chat template and prompts from its GGUF",
                param=field,
            )
    lines = state.model_store.create(_model_of(body), body.files or {}, body.parameters)
    return await _streamed(lines, body.stream)
