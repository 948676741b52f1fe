"""GET /v1/models and GET /v1/models/{id}."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import State
from server.api.openapi_errors import ERROR_RESPONSES
from server.models.config import ModelConfig
from server.protocol.models import ModelCard, ModelList
from server.registry import ModelRegistry

router = APIRouter(tags=["models"])

OWNER = "hearth"


def _card(config: ModelConfig, registry: ModelRegistry) -> ModelCard:
    remote = config.upstream is not None
    return ModelCard(
        id=config.name,
        created=registry.created,
        owned_by=OWNER,
        loaded=remote or registry.is_loaded(config.name),
        remote=remote,
        aliases=config.aliases,
    )


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    return ModelList(data=[_card(c, state.registry) for c in state.registry.configs])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def get_model(model_id: str, state: State) -> ModelCard:
    return _card(state.registry.resolve(model_id), state.registry)
