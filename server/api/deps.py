"""Small helpers that connect a request to the app's state; no logic of their own, no locks."""

from __future__ import annotations

import uuid
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
    """Who is asking. The queue is fair across API keys; without keys, across the requests'
    ``user``, and a request without one is an owner of its own (its choices still count as
    one owner's). With keys, tokens are metered against the key's tokens per minute as they
    are used, and only an admin key may shorten a model's keep_alive."""
    key = api_key_of(request)
    if key is None:
        return Caller(owner=f"user:{user}" if user else f"request:{uuid.uuid4().hex}")
    state = get_state(request)
    limiter = state.limiter

    def meter(tokens: int) -> None:
        limiter.consume_tokens(key, tokens)

    return Caller(
        owner=f"key:{key.name}",
        max_tokens_cap=key.limits.max_tokens,
        may_shorten_keep_alive=key.admin,
        meter=meter,
        cache_scope="" if state.settings.share_prefix_cache else key.name,
    )


def track(run: PreparedRun, request: Request, state: AppState) -> None:
    """Label the request's metrics with its model, and report the run when it ends (metrics
    and the request's log line; tokens were metered against the key as they were used)."""
    request.state.model = run.model
    run.on_finish.append(state.metrics.record_run)

    def remember(record: RunRecord) -> None:  # for the request's log line
        request.state.run_record = record

    run.on_finish.append(remember)
