"""The one object that holds everything the running app owns."""

from __future__ import annotations

from dataclasses import dataclass

from server.registry import ModelRegistry
from server.services.chat import ChatService
from server.services.completions import CompletionService
from server.settings import Settings


@dataclass
class AppState:
    """Built in the app's lifespan, hung on ``app.state.hearth``, reached through
    :func:`server.api.deps.get_state`."""

    settings: Settings
    registry: ModelRegistry
    chat: ChatService
    completions: CompletionService

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        registry = ModelRegistry(settings)
        return cls(settings, registry, ChatService(registry), CompletionService(registry))

    def close(self) -> None:
        self.registry.close()
