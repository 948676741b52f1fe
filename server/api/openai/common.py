"""What OpenAI's chat and text completion adapters share: the request fields every
generation has, SSE streams, remote models, and the route body both run."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from typing import Any, ClassVar, Generic, TypeVar

from fastapi import Request, Response
from pydantic import BaseModel

from server.api.openai.proxy import forward_if_remote
from server.api.runner import serve
from server.api.sse import sse_response
from server.protocol.common import SamplingFields
from server.services.generation import Caller, Run
from server.services.spec import Sampling
from server.state import AppState

Body = TypeVar("Body", bound=SamplingFields)


class OpenAIAdapter(ABC, Generic[Body]):
    """An OpenAI generation route: ``body`` in, a whole response or SSE chunks out."""

    # The route below /v1, for remote models.
    path: ClassVar[str]

    def __init__(self, body: Body, state: AppState) -> None:
        self.body = body
        self.state = state

    @property
    def stream(self) -> bool:
        return self.body.stream

    @property
    def user(self) -> str | None:
        return self.body.user

    @abstractmethod
    async def prepare(self, caller: Caller) -> Run: ...

    @abstractmethod
    async def answer(self, run: Run) -> BaseModel: ...

    @abstractmethod
    def chunks(self, run: Run) -> AsyncGenerator[BaseModel, None]: ...

    def stream_response(self, run: Run, on_close: Callable[[], None]) -> Response:
        return sse_response(
            self.chunks(run), shutdown_grace=self.state.settings.shutdown_grace, on_close=on_close
        )


def sampling_of(
    body: SamplingFields, logit_bias: dict[str, float] | None, logprobs: int | None
) -> Sampling:
    return Sampling(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repeat_penalty=body.repeat_penalty,
        seed=body.seed,
        stop=tuple(body.stop_list()),
        logit_bias=logit_bias,
        logprobs=logprobs,
    )


async def serve_openai(adapter: OpenAIAdapter[Any], request: Request, state: AppState) -> Any:
    """A remote model's answer relayed, or the adapter run here."""
    remote = await forward_if_remote(adapter.body, adapter.path, request, state)
    if remote is not None:
        return remote
    return await serve(adapter, request, state)
