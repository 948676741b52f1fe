"""Small helpers that connect a request to the app's state; no logic of their own, no locks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.access import ApiKey
from server.metrics import RunRecord
from server.services.generation import Caller, PreparedRun
from server.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.hearth
    return state


State = Annotated[AppState, Depends(get_state)]


def api_key_of(request: Request) -> ApiKey | None:
    """The key the gateway authenticated, if keys are on."""
    key: ApiKey | None = getattr(request.state, "api_key", None)
    return key


def caller_of(request: Request, user: str | None) -> Caller:
    """The queue is fair across API keys; without keys, across the requests' ``user``."""
    key = api_key_of(request)
    if key is None:
        return Caller(owner=user or "")
    return Caller(owner=key.name, max_tokens_cap=key.limits.max_tokens)


def track(run: PreparedRun, request: Request, state: AppState) -> None:
    """Label the request's metrics with its model, and count its tokens when it ends: in the
    metrics, and against its API key's tokens-per-minute limit."""
    request.state.model = run.model
    run.on_finish.append(state.metrics.record_run)

    def remember(record: RunRecord) -> None:  # for the request's log line
        request.state.run_record = record

    run.on_finish.append(remember)
    key = api_key_of(request)
    if key is not None:

        def count_tokens(record: RunRecord) -> None:
            state.limiter.record_tokens(key, record.prompt_tokens + record.completion_tokens)

        run.on_finish.append(count_tokens)
