"""Newline-delimited JSON streams (Ollama's form): one object a line, no terminator."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from starlette.responses import StreamingResponse

from server.api.closing import ClosesWhenOver
from server.api.errors import error_payload
from server.errors import HearthError

logger = logging.getLogger(__name__)


class ClosingStreamingResponse(ClosesWhenOver, StreamingResponse):
    """A streaming response that calls ``on_close`` once it is over: sent, failed, or cut off
    by the client (Starlette cancels the body when the client disconnects)."""


def ndjson_response(
    lines: AsyncGenerator[dict[str, Any], None], *, on_close: Callable[[], None]
) -> StreamingResponse:
    """Stream ``lines`` as NDJSON. An error after the first line cannot change the status, so
    it is sent as a last ``{"error": "..."}`` line, as Ollama does."""

    async def encoded() -> AsyncGenerator[bytes, None]:
        try:
            async for line in lines:
                yield json.dumps(line, ensure_ascii=False).encode() + b"\n"
        except HearthError as exc:
            yield json.dumps(error_payload(exc, "ollama")).encode() + b"\n"
        except Exception:
            logger.exception("stream failed")
            yield b'{"error": "internal server error"}\n'
        finally:
            await lines.aclose()

    return ClosingStreamingResponse(encoded(), media_type="application/x-ndjson", on_close=on_close)
