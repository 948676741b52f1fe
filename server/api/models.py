"""GET /v1/models, GET /v1/models/{id}, GET /health."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import State
from server.protocol.models import ModelCard, ModelList
from server.settings import ModelConfig

router = APIRouter(tags=["models"])

OWNER = "hearth"


def _card(config: ModelConfig, created: int) -> ModelCard:
    return ModelCard(id=config.name, created=created, owned_by=OWNER)


@router.get("/v1/models", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    created = state.registry.created
    return ModelList(data=[_card(c, created) for c in state.registry.configs])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, state: State) -> ModelCard:
    return _card(state.registry.resolve(model_id), state.registry.created)


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
