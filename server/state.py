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
from server.services.model_info import ModelInfo
from server.services.model_store import ModelStore
from server.services.prep import PrepExecutor
from server.services.response_store import ResponseStore
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
    prep: PrepExecutor
    responses: ResponseStore
    model_info: ModelInfo
    model_store: ModelStore

    @classmethod
    def build(cls, settings: Settings) -> AppState:
        registry = ModelRegistry(settings)
        limits = RunLimits(
            request_timeout=settings.request_timeout,
            max_messages=settings.max_messages,
            max_tools=settings.max_tools,
        )
        prep = PrepExecutor(settings.prep_threads, max_waiting=settings.max_queue)
        chat = ChatService(registry, limits, prep)
        return cls(
            settings,
            registry,
            chat,
            CompletionService(registry, limits, prep),
            EmbeddingService(registry, prep),
            TokenService(registry, prep, chat, limits),
            KeyStore(build_keys(settings)),
            RateLimiter(),
            Metrics(registry, compat=settings.metrics_compat),
            UpstreamService(),
            prep,
            open_response_store(settings),
            ModelInfo(registry, settings),
            ModelStore(settings, registry),
        )

    def begin_shutdown(self) -> None:
        """SIGTERM: refuse new work with 503 while running requests finish."""
        self.registry.stop_accepting()

    def stop_running_generations(self) -> None:
        """The grace period is nearly over: end every generation still queued or running
        (its client gets a 503 or an error event), rather than have uvicorn cut it off."""
        self.registry.cancel_all()

    def close(self) -> None:
        """Unload the models (blocking; the lifespan runs it in a worker thread)."""
        self.prep.close()
        self.registry.close()
        self.responses.close()


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


def open_response_store(settings: Settings) -> ResponseStore:
    return ResponseStore(
        settings.resolve_path(settings.responses_db),
        max_count=settings.responses_max_count,
        max_age=settings.responses_max_age,
        max_bytes=settings.responses_max_bytes,
    )
