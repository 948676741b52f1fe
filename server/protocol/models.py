"""Wire types of GET /v1/models."""

from __future__ import annotations

from typing import Literal

from server.protocol.common import OpenAIResponse


class ModelCard(OpenAIResponse):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(OpenAIResponse):
    object: Literal["list"] = "list"
    data: list[ModelCard]
