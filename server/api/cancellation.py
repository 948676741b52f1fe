"""Stop work whose client has gone away."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response

T = TypeVar("T")

# nginx's "client closed request": never seen by the client, but honest in access logs.
CLIENT_CLOSED_REQUEST = 499


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | Response:
    """Run ``work``, racing it against the client's ``http.disconnect``.

    Waiting on the ASGI receive channel, rather than polling ``is_disconnected()`` between
    steps, means a non-streaming request notices a dropped connection at once, even while it is
    queued behind other work; cancelling ``work`` then cancels its generation in the engine.
    The body has already been read, so the only message left on the channel is the disconnect.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # let its cleanup (cancelling the generation) run
    if task.cancelled():
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return task.result()
