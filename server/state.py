"""The one object that holds everything the running app owns."""

from __future__ import annotations

from dataclasses import dataclass

from server.registry import ModelRegistry
from server.services.chat import ChatService
from server.services.completions import CompletionService
from server.services.embeddings import EmbeddingService
from server.services.generation import RunLimits
from server.services.tokens import TokenService
from server.settings import Settings


@dataclass
class AppState:
    """Built in the app's lifespan, hung on ``app.state.hearth``, reached through
    :func:`server.api.deps.get_state`."""

    settings: Settings
    registry: ModelRegistry
    chat: ChatService
    completions: CompletionService
    embeddings: EmbeddingService
    tokens: TokenService

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        registry = ModelRegistry(settings)
        limits = RunLimits(request_timeout=settings.request_timeout)
        return cls(
            settings,
            registry,
            ChatService(registry, limits),
            CompletionService(registry, limits),
            EmbeddingService(registry),
            TokenService(registry),
        )

    def begin_shutdown(self) -> None:
        """SIGTERM: refuse new work with 503 while running requests finish."""
        self.registry.stop_accepting()

    def close(self) -> None:
        self.registry.close()
