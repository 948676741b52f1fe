"""The one object that holds everything the running app owns."""

from __future__ import annotations

from dataclasses import dataclass

from server.access import ApiKey, KeyLimits, KeyStore, RateLimiter, load_keys
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.services.chat import ChatService
from server.services.completions import CompletionService
from server.services.embeddings import EmbeddingService
from server.services.generation import RunLimits
from server.services.tokens import TokenService
from server.services.upstream import UpstreamService
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
    keys: KeyStore
    limiter: RateLimiter
    metrics: Metrics
    upstream: UpstreamService

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
            KeyStore(build_keys(settings)),
            RateLimiter(),
            Metrics(registry),
            UpstreamService(),
        )

    def begin_shutdown(self) -> None:
        """SIGTERM: refuse new work with 503 while running requests finish."""
        self.registry.stop_accepting()

    def close(self) -> None:
        """Unload the models (blocking; the lifespan runs it in a worker thread)."""
        self.registry.close()


def build_keys(settings: Settings) -> list[ApiKey]:
    """The API keys the settings name, each with its limits (the defaults where unset)."""
    defaults = KeyLimits(
        requests_per_minute=settings.key_requests_per_minute,
        tokens_per_minute=settings.key_tokens_per_minute,
        max_concurrent=settings.key_max_concurrent,
        max_tokens=settings.key_max_tokens,
    )
    keys_file = None
    if settings.api_keys_file is not None:
        keys_file = settings.resolve_path(settings.api_keys_file)
    return load_keys(settings.api_keys, keys_file, defaults)
