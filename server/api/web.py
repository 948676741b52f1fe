"""The web page: GET / (a chat playground and a status view, static files in server/web/, no
build step) and GET /status (the JSON summary its status view polls).

The page itself loads without an API key; everything it shows comes from routes that need one
when keys are on (it asks for the key, and keeps it in the browser). A strict Content Security
Policy lets the page run only its own script and talk only to this server.
"""

from __future__ import annotations

import time
from collections import Counter
from importlib import resources

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse

from server.api.deps import Context, State
from server.api.ollama.models import ROOT_TEXT
from server.api.openapi_errors import ERROR_RESPONSES
from server.errors import NotFoundError
from server.protocol.status import KeyUsage, ModelStatus, ServerStatus

router = APIRouter(tags=["web"])

# The page's files: path -> (file in server/web/, content type).
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/markdown.js": ("markdown.js", "text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _asset(path: str) -> Response:
    name, media_type = ASSETS[path]
    body = resources.files("server.web").joinpath(name).read_bytes()
    return Response(body, media_type=media_type, headers=PAGE_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def root(state: State, request: Request) -> Response:
    """The page, for a browser; for anything else (Ollama's command line checks that the
    server answers here before anything else), a line of text."""
    # What / answers depends on Accept: caches must keep the two apart.
    if state.settings.web_ui and "text/html" in request.headers.get("accept", ""):
        page = _asset("/")
        page.headers["Vary"] = "Accept"
        return page
    return PlainTextResponse(ROOT_TEXT, headers={"Vary": "Accept"})


def _asset_route(path: str) -> None:
    async def serve(state: State) -> Response:
        if not state.settings.web_ui:
            raise NotFoundError("the web page is turned off (web_ui = false)")
        return _asset(path)

    router.add_api_route(path, serve, methods=["GET"], include_in_schema=False)


for _path in ASSETS:
    if _path != "/":
        _asset_route(_path)


@router.get("/status", response_model=ServerStatus, responses=ERROR_RESPONSES)
async def status(state: State, context: Context) -> ServerStatus:
    """Models (loaded, slots busy, queue, prefix-cache hits, tokens) and, for an admin key,
    every key's usage."""
    registry = state.registry
    models = []
    for config in registry.configs:
        totals: Counter[str] = state.metrics.token_totals.get(config.name, Counter())
        model = ModelStatus(
            name=config.name,
            loaded=registry.is_loaded(config.name),
            remote=config.upstream is not None,
            prompt_tokens=totals.get("prompt", 0),
            cached_tokens=totals.get("cached", 0),
            completion_tokens=totals.get("completion", 0),
        )
        handle = registry.loaded_handle(config.name)
        if handle is not None:
            stats = handle.engine.stats()
            model.slots = handle.config.slots
            model.slots_busy = stats.running
            model.queue_depth = stats.queued + stats.deferred
            model.prefix_cache_hits = stats.cache.get("hits", 0)
            model.prefix_cache_misses = stats.cache.get("misses", 0)
            model.flash_attn = handle.layout.flash_attn
            model.flash_attn_source = handle.layout.source
            model.layout_rates = handle.layout.rates or None
            model.speculation = handle.speculation
        models.append(model)
    keys = None
    if context.api_key is not None and context.api_key.admin:
        keys = []
        for key in state.keys.keys:
            requests, tokens, recent, running = state.limiter.usage(key)
            keys.append(
                KeyUsage(
                    name=key.name,
                    requests=requests,
                    tokens=tokens,
                    tokens_last_minute=recent,
                    running=running,
                )
            )
    return ServerStatus(
        uptime_seconds=time.monotonic() - state.metrics.started, models=models, keys=keys
    )
