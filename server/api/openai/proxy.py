"""Remote models: hand the request to the upstream service and relay its answer.

A remote model answers to the same caps as a local one: the model's and the API key's
``max_tokens`` (the key's shared by all the request's choices), tokens per minute while a
stream runs (each relayed chunk counts as a token, corrected by the upstream's own usage at
the end, which Hearth always asks for), and only the fields Hearth knows are forwarded.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.api.deps import caller_of, context_of
from server.metrics import RunRecord
from server.models.config import ModelConfig
from server.services.generation import Caller
from server.state import AppState

# Hearth's own fields that only mean something here: never sent upstream.
_LOCAL_FIELDS = frozenset({"keep_alive", "priority", "parse_special"})


async def forward_if_remote(
    body: BaseModel, path: str, request: Request, state: AppState
) -> Response | None:
    """The upstream's answer when ``body.model`` is a remote model, else None (serve it here).
    ``path`` is the route below ``/v1``."""
    config = state.registry.resolve(str(getattr(body, "model", "")))
    if config.upstream is None:
        return None
    context = context_of(request)
    context.model = config.name
    caller = caller_of(context, state, getattr(body, "user", None))
    ledger = caller.ledger
    assert ledger is not None
    stream = bool(getattr(body, "stream", False))
    known = set(type(body).model_fields) - _LOCAL_FIELDS
    payload = body.model_dump(mode="json", exclude_unset=True, by_alias=True, include=known)
    _cap_tokens(payload, config, caller)
    client_wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    if stream:  # always asked for, so that a stream's tokens are counted
        payload["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}

    def meter_chunk() -> None:
        # A relayed stream cannot be ended as if at its max_tokens: over the key's tokens
        # per minute, it ends with an error event.
        if not ledger.meter(1):
            ledger.check()

    def count(prompt: int, completion: int) -> None:
        ledger.record(RunRecord(config.name, prompt_tokens=prompt, completion_tokens=completion))

    answer = await state.upstream.forward(
        config,
        path,
        payload,
        stream=stream,
        on_usage=count,
        on_chunk=meter_chunk,
        keep_usage=client_wants_usage,
    )
    if answer.lines is not None:
        return StreamingResponse(answer.lines, media_type="text/event-stream")
    return Response(answer.body, status_code=answer.status, media_type=answer.content_type)


def _cap_tokens(payload: dict[str, Any], config: ModelConfig, caller: Caller) -> None:
    """Lower (or set) the request's max_tokens to the model's and the key's caps."""
    if "input" in payload:  # embeddings: nothing is generated
        return
    prompt = payload.get("prompt")
    several = isinstance(prompt, list) and bool(prompt) and not isinstance(prompt[0], int)
    prompts = len(prompt) if several and isinstance(prompt, list) else 1
    jobs = int(payload.get("n") or 1) * prompts
    caps = [c for c in (config.max_tokens_cap, caller.cap_per_job(jobs)) if c is not None]
    if not caps:
        return
    cap = min(caps)
    fields = [f for f in ("max_tokens", "max_completion_tokens") if payload.get(f) is not None]
    for field in fields or ["max_tokens"]:
        payload[field] = min(int(payload.get(field) or cap), cap)
