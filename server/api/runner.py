"""One way to answer a generation request, for every API family's adapter.

The adapter turns its wire request into a prepared :class:`~server.services.generation.Run`
and the run's output back into its wire format; the runner owns the run in between: it
queues a streamed run before the stream starts (so a full queue is a plain 429, not an error
event inside a 200), races a whole answer against the client's disconnect, and closes the
run on every exit path: answered, failed, client gone (before or during the stream), or
shut down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from fastapi import Request, Response

from server.api.cancellation import unless_disconnected
from server.api.deps import caller_of, context_of
from server.errors import InvalidRequestError
from server.models.config import ModelConfig
from server.services.generation import Caller, Run
from server.state import AppState


class GenerationAdapter(Protocol):
    """What one API family's generation route gives the runner."""

    @property
    def stream(self) -> bool: ...

    @property
    def user(self) -> str | None: ...

    async def prepare(self, caller: Caller) -> Run:
        """Validate and tokenize (every error a plain HTTP error)."""
        ...

    async def answer(self, run: Run) -> Any:
        """Run to the end; the family's whole response."""
        ...

    def stream_response(self, run: Run, on_close: Callable[[], None]) -> Response:
        """The family's stream of ``run``, which calls ``on_close`` once it is over,
        whether or not it ever started."""
        ...


async def serve(adapter: GenerationAdapter, request: Request, state: AppState) -> Any:
    context = context_of(request)
    run = await adapter.prepare(caller_of(context, state, adapter.user))
    context.model = run.model
    if adapter.stream:
        try:
            run.submit()  # a full queue is a 429 here, not an error event in a 200 stream
            return adapter.stream_response(run, run.close)
        except BaseException:
            run.close()
            raise
    try:
        return await unless_disconnected(request, adapter.answer(run))
    finally:
        run.close()


def local_model(state: AppState, model: str, routes: str) -> ModelConfig:
    """The config of ``model``, which must be served here: remote models (``upstream``) are
    relayed on OpenAI's chat and completion routes only, in their wire format."""
    config = state.registry.resolve(model)
    if config.upstream is not None:
        raise InvalidRequestError(
            f"model '{model}' is a remote model; {routes} serves local models "
            "(use /v1/chat/completions for remote ones)",
            param="model",
        )
    return config
