"""The FastAPI application: ``create_app(settings)`` wires routers, errors and state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server.api import health, models, tokens, web
from server.api.anthropic import messages
from server.api.errors import install_error_handlers
from server.api.gateway import REQUEST_ID_HEADER, Gateway
from server.api.limits import BodySizeLimit
from server.api.ollama import generation as ollama_generation
from server.api.ollama import manage as ollama_manage
from server.api.ollama import models as ollama_models
from server.api.ollama.body import JsonBodies
from server.api.openai import chat, completions, embeddings, responses
from server.errors import HearthError
from server.settings import Settings
from server.state import AppState

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Build the app. Reads nothing from the environment: ``settings`` is all it knows."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = AppState.build(settings)
        app.state.hearth = state
        state.registry.start_reaper()
        for config in settings.models:
            if config.preload and config.upstream is None:
                try:
                    (await state.registry.checkout(config.name)).release()
                except HearthError as exc:
                    logger.error("could not preload model %s: %s", config.name, exc.message)
        try:
            yield
        finally:
            state.registry.stop_reaper()
            await state.upstream.aclose()
            await asyncio.to_thread(state.close)

    app = FastAPI(
        title="Hearth",
        summary="A server for local GGUF models that speaks the OpenAI, Anthropic and Ollama APIs",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # The last added runs first: CORS answers preflights and decorates every answer (401s
    # included), then the gateway gives each request its id, key check and metrics.
    app.add_middleware(JsonBodies)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(Gateway)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        )
    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(responses.router)
    app.include_router(embeddings.router)
    app.include_router(messages.router)
    app.include_router(ollama_generation.router)
    app.include_router(ollama_models.router)
    app.include_router(ollama_manage.router)
    app.include_router(tokens.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(web.router)
    return app
