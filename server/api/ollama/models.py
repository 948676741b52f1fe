"""Ollama's model routes: version, tags, show, ps, embeddings (pull, create, copy, delete:
:mod:`server.api.ollama.manage`; push is refused)."""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response

from server.api.cancellation import unless_disconnected
from server.api.deps import Context, State, caller_of
from server.api.openapi_errors import OLLAMA_ERROR_RESPONSES
from server.errors import HearthError, InvalidRequestError
from server.protocol.common import KEEP_ALIVE_FOREVER
from server.protocol.ollama import EmbeddingsRequest, EmbedRequest, ShowRequest
from server.services.embeddings import EmbeddingSpec
from server.services.model_info import ModelFacts

logger = logging.getLogger(__name__)

router = APIRouter(tags=["ollama"])

# The Ollama version Hearth answers to: clients gate features (tools, thinking, structured
# outputs) on it, and Hearth serves what the Ollama of this version serves.
OLLAMA_VERSION = "0.12.0"


# What GET / answers a client that is not a browser (server/api/web.py): Ollama's command
# line checks that the server answers there before anything else.
ROOT_TEXT = "Hearth is running (it speaks Ollama's API under /api)"


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION}


def _details(facts: ModelFacts) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": facts.architecture,
        "families": [facts.architecture],
        "parameter_size": facts.parameter_size,
        "quantization_level": facts.quantization,
    }


@router.get("/api/tags")
async def tags(state: State) -> dict[str, Any]:
    models = []
    for config in state.registry.configs:
        if config.upstream is not None or not state.registry.can_load(config):
            continue
        try:
            facts = await state.model_info.facts(config)
        except HearthError as exc:  # one unreadable file does not hide the others
            logger.warning("not listing model %s: %s", config.name, exc.message)
            continue
        models.append(
            {
                "name": facts.name,
                "model": facts.name,
                "modified_at": facts.modified.isoformat(),
                "size": facts.size,
                "digest": facts.digest,
                "details": _details(facts),
            }
        )
    return {"models": models}


@router.post("/api/show", responses=OLLAMA_ERROR_RESPONSES)
async def show(body: ShowRequest, state: State) -> dict[str, Any]:
    name = body.model or body.name
    if not name:
        raise InvalidRequestError("model is required", param="model")
    config = state.registry.resolve(name)
    if config.upstream is not None:
        raise InvalidRequestError(f"model '{name}' is a remote model", param="model")
    facts = await state.model_info.facts(config)
    info = {
        k: v if not isinstance(v, float) or math.isfinite(v) else str(v)
        for k, v in facts.metadata.items()
        if not k.startswith("tokenizer.")
    }
    # The context Hearth serves the model with, which clients size their prompts by.
    info[f"{facts.architecture}.context_length"] = facts.context_length
    defaults = config.defaults
    parameters = [
        f"{key} {value}"
        for key, value in (
            ("temperature", defaults.temperature),
            ("top_p", defaults.top_p),
            ("top_k", defaults.top_k),
            ("num_ctx", facts.context_length),
        )
        if value is not None
    ]
    return {
        "modelfile": f"# Served by Hearth from {facts.path.name}\nFROM {facts.path.name}\n",
        "parameters": "\n".join(parameters),
        "template": facts.chat_template or "{{ .Prompt }}",
        "details": _details(facts),
        "model_info": info,
        "capabilities": list(facts.capabilities),
        "modified_at": facts.modified.isoformat(),
    }


@router.get("/api/ps")
async def running(state: State) -> dict[str, Any]:
    models = []
    for handle in state.registry.loaded_handles():
        facts = await state.model_info.facts(handle.config)
        keep_alive = handle.keep_alive
        if keep_alive is None or keep_alive < 0 or keep_alive > KEEP_ALIVE_FOREVER:
            expires = datetime.max.replace(tzinfo=UTC)
        else:
            idle = 0.0 if handle.active else time.monotonic() - handle.last_used
            expires = datetime.now(UTC) + timedelta(seconds=max(0.0, keep_alive - idle))
        models.append(
            {
                "name": handle.name,
                "model": handle.name,
                "size": handle.size_bytes,
                "digest": facts.digest,
                "details": _details(facts),
                "expires_at": expires.isoformat(),
                "size_vram": handle.size_bytes if handle.config.n_gpu_layers != 0 else 0,
                "context_length": handle.n_ctx,
            }
        )
    return {"models": models}


@router.post("/api/embed", response_model=None, responses=OLLAMA_ERROR_RESPONSES)
async def embed(
    body: EmbedRequest, request: Request, state: State, context: Context
) -> dict[str, Any] | Response:
    started = time.monotonic()
    was_loaded = state.registry.is_loaded(state.registry.resolve(body.model).name)
    spec = EmbeddingSpec(
        body.model, body.input, body.dimensions, body.keep_alive_seconds, truncate=body.truncate
    )
    result = await unless_disconnected(
        request, state.embeddings.create(spec, caller_of(context, state, None))
    )
    if isinstance(result, Response):  # the client left
        return result
    context.model = result.model
    total = time.monotonic() - started
    return {
        "model": result.model,
        "embeddings": result.vectors,
        "total_duration": int(total * 1e9),
        "load_duration": 0 if was_loaded else int(total * 1e9),
        "prompt_eval_count": result.tokens,
    }


@router.post("/api/embeddings", response_model=None, responses=OLLAMA_ERROR_RESPONSES)
async def embeddings(
    body: EmbeddingsRequest, request: Request, state: State, context: Context
) -> dict[str, Any] | Response:
    spec = EmbeddingSpec(body.model, body.prompt, keep_alive=body.keep_alive_seconds, truncate=True)
    result = await unless_disconnected(
        request, state.embeddings.create(spec, caller_of(context, state, None))
    )
    if isinstance(result, Response):
        return result
    context.model = result.model
    return {"embedding": result.vectors[0]}


async def _refuse_push() -> None:
    raise InvalidRequestError(
        "Hearth does not push models: it pulls them (POST /api/pull, `hearth pull`) and "
        "creates them from uploaded GGUFs (POST /api/create)",
        code="unsupported_feature",
    )


router.add_api_route("/api/push", _refuse_push, methods=["POST"])
