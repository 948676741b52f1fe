"""Small helpers that connect a request to the app's state; no logic of their own, no locks."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from server.context import RequestContext
from server.services.generation import Caller
from server.services.usage import Ledger
from server.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.hearth
    return state


async def _state(request: Request) -> AppState:
    # A coroutine, so FastAPI calls it on the event loop: a plain function dependency is run
    # in its thread pool, two thread hops per request for reading an attribute.
    return get_state(request)


State = Annotated[AppState, Depends(_state)]


def context_of(request: Request) -> RequestContext:
    """The request's context, made by the gateway."""
    context: RequestContext = request.state.context
    return context


async def _context(request: Request) -> RequestContext:
    return context_of(request)  # a coroutine for the same reason as _state


Context = Annotated[RequestContext, Depends(_context)]


def caller_of(context: RequestContext, state: AppState, user: str | None) -> Caller:
    """Who is asking. The queue is fair across API keys; without keys, across the requests'
    ``user``, and a request without one is an owner of its own (its choices still count as
    one owner's). With keys, tokens are metered against the key's tokens per minute as they
    are used, only an admin key may shorten a model's keep_alive, and cached prompts (in RAM
    and saved on disk) are the key's own by its identity, so they stay its own across a
    restart with other keys."""
    ledger = Ledger(context, state.metrics, state.limiter)
    key = context.api_key
    if key is None:
        owner = f"user:{user}" if user else f"request:{uuid.uuid4().hex}"
        return Caller(owner=owner, ledger=ledger)
    return Caller(
        owner=f"key:{key.name}",
        max_tokens_cap=key.limits.max_tokens,
        may_shorten_keep_alive=key.admin,
        ledger=ledger,
        cache_scope="" if state.settings.share_prefix_cache else key.identity,
    )
