"""Typed stream chunks to Server-Sent Events, always ending with ``data: [DONE]``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from server.api.closing import ClosesWhenOver
from server.api.errors import error_payload
from server.errors import HearthError

logger = logging.getLogger(__name__)


class ClosingEventStream(ClosesWhenOver, EventSourceResponse):
    """An event stream that calls ``on_close`` once it is over: sent, failed, or cut off by
    the client, even before its first event (when its generator never starts)."""


def sse_response(
    chunks: AsyncGenerator[BaseModel, None],
    *,
    shutdown_grace: float,
    on_close: Callable[[], None],
) -> EventSourceResponse:
    """Stream ``chunks`` as SSE. An error after the first byte cannot change the HTTP status, so
    it is sent as a ``data: {"error": ...}`` event, followed by ``[DONE]`` like any stream.
    A client disconnect cancels the generator; closing ``chunks`` then cancels the generation,
    and ``on_close`` runs once the response is over."""

    async def events() -> AsyncGenerator[dict[str, str], None]:
        try:
            async for chunk in chunks:
                yield {"data": chunk.model_dump_json()}
        except HearthError as exc:
            yield {"data": json.dumps(error_payload(exc))}
        except Exception:
            logger.exception("stream failed")
            internal = HearthError("internal server error", code="internal_error")
            yield {"data": json.dumps(error_payload(internal))}
        finally:
            await chunks.aclose()
        yield {"data": "[DONE]"}

    # On shutdown, let a running stream finish (within the server's grace period) rather
    # than cutting it off mid-answer.
    return ClosingEventStream(
        events(), ping=15, shutdown_grace_period=shutdown_grace, on_close=on_close
    )


def named_event_stream(
    events: AsyncGenerator[tuple[str, dict[str, Any]], None],
    *,
    shutdown_grace: float,
    on_close: Callable[[], None],
) -> EventSourceResponse:
    """Stream ``(name, payload)`` pairs as ``event: name`` / ``data: payload`` SSE, with no
    ``[DONE]`` (the Responses API's form). The generator reports its own errors as events; an
    unexpected one is logged and ends the stream."""

    async def encoded() -> AsyncGenerator[dict[str, str], None]:
        try:
            async for name, payload in events:
                yield {"event": name, "data": json.dumps(payload, ensure_ascii=False)}
        except Exception:
            logger.exception("stream failed")
        finally:
            await events.aclose()

    return ClosingEventStream(
        encoded(), ping=15, shutdown_grace_period=shutdown_grace, on_close=on_close
    )
