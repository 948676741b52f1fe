"""Wire types of GET /v1/models."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from server.protocol.common import OpenAIResponse


class ModelCard(OpenAIResponse):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Not OpenAI's: where the model runs and whether it is in memory now.
    loaded: bool = Field(False, description="Loaded in memory now (remote models: always).")
    remote: bool = Field(False, description="Served by an upstream server, proxied.")
    aliases: list[str] = Field(default_factory=list)


class Readiness(OpenAIResponse):
    status: Literal["ready"] = "ready"
    loaded_models: list[str]


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]
