"""GET /health (alive), GET /ready (can serve a model), GET /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.api.deps import State
from server.api.openapi_errors import ERROR_RESPONSES
from server.errors import ServiceUnavailableError
from server.metrics import CONTENT_TYPE
from server.protocol.models import Readiness

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up and answering (a liveness probe)."""
    return {"status": "ok"}


@router.get("/ready", response_model=Readiness, responses=ERROR_RESPONSES)
async def ready(state: State) -> Readiness:
    """A model can be served now (a readiness probe): the server is not shutting down, every
    `preload`ed model is loaded, and some model is loaded, remote, or has its file in place
    (to load on its first request)."""
    registry = state.registry
    if not registry.accepting:
        raise ServiceUnavailableError("the server is shutting down", code="not_ready")
    waiting = [c.name for c in registry.configs if c.preload and not registry.is_loaded(c.name)]
    if waiting:
        raise ServiceUnavailableError(
            f"not ready: still loading {', '.join(waiting)}", code="not_ready", retry_after=5
        )
    failed = registry.failed_models()
    if failed:
        raise ServiceUnavailableError(
            f"not ready: the engine of {', '.join(failed)} stopped; it reloads on the next request",
            code="not_ready",
            retry_after=5,
        )
    loaded = [h.name for h in registry.loaded_handles()]
    if not loaded and not any(registry.can_load(c) for c in registry.configs):
        raise ServiceUnavailableError(
            "not ready: no model is loaded, remote, or has its file (run `hearth models pull`)",
            code="not_ready",
        )
    return Readiness(loaded_models=loaded)


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    """Prometheus text exposition."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)
