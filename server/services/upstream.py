"""Remote models: requests forwarded to another OpenAI-compatible server with httpx.

The request body goes on as the client sent it (validated here first), with ``model`` set to
the upstream's name for it; answers come back with ``model`` set to this server's name, streams
chunk by chunk. An upstream that cannot be reached, times out or breaks off is a 502 (or, once
a stream has started, an SSE error event and ``[DONE]``); its own errors pass through with
their status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from server.errors import UpstreamError
from server.settings import ModelConfig

logger = logging.getLogger(__name__)


@dataclass
class UpstreamAnswer:
    """A whole answer (``body``), or an open stream of SSE lines (``lines``)."""

    status: int
    content_type: str
    body: bytes = b""
    lines: AsyncIterator[str] | None = None


class UpstreamService:
    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(transport=transport)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def forward(
        self,
        config: ModelConfig,
        path: str,
        body: dict[str, Any],
        *,
        stream: bool,
        on_usage: UsageSink | None = None,
    ) -> UpstreamAnswer:
        """POST ``body`` to the upstream's ``path`` (``/chat/completions``, ...). ``on_usage``
        gets the prompt and completion tokens the answer reports: a whole answer's always, a
        stream's when the client asked for stream usage."""
        assert config.upstream is not None
        url = config.upstream.rstrip("/") + path
        payload = {**body, "model": config.upstream_model or config.name}
        headers = {"Accept": "text/event-stream" if stream else "application/json"}
        if config.upstream_api_key:
            headers["Authorization"] = f"Bearer {config.upstream_api_key}"
        request = self._client.build_request(
            "POST", url, json=payload, headers=headers, timeout=config.upstream_timeout
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _unreachable(config, exc) from exc
        content_type = response.headers.get("content-type", "application/json")
        if not stream or response.status_code != 200 or "event-stream" not in content_type:
            try:
                raw = await response.aread()
            except httpx.HTTPError as exc:
                raise _unreachable(config, exc) from exc
            finally:
                await response.aclose()
            if on_usage is not None and response.status_code == 200:
                _report_usage(raw, on_usage)
            return UpstreamAnswer(response.status_code, content_type, _renamed(raw, config.name))
        return UpstreamAnswer(200, content_type, lines=_sse_lines(response, config, on_usage))


def _unreachable(config: ModelConfig, exc: Exception) -> UpstreamError:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    logger.warning("upstream for model %s %s: %r", config.name, kind, exc)
    return UpstreamError(
        f"the upstream server for model '{config.name}' ({config.upstream}) {kind}: "
        f"{type(exc).__name__}",
        retry_after=5,
    )


UsageSink = Callable[[int, int], None]


def _report_usage(chunk: bytes, on_usage: UsageSink) -> None:
    try:
        usage = json.loads(chunk).get("usage") or {}
        on_usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
    except (ValueError, AttributeError, TypeError):
        return


def _renamed(raw: bytes, name: str) -> bytes:
    """The JSON answer with its ``model`` set to this server's name (others unchanged)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(data, dict) and "model" in data:
        data["model"] = name
        return json.dumps(data, ensure_ascii=False).encode()
    return raw


async def _sse_lines(
    response: httpx.Response, config: ModelConfig, on_usage: UsageSink | None
) -> AsyncIterator[str]:
    """The upstream's SSE lines, each ``data:`` chunk renamed; a break-off ends the stream with
    an error event and ``[DONE]``, as Hearth's own streams end."""
    try:
        async for line in response.aiter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                chunk = line[5:].strip().encode()
                if on_usage is not None and b'"usage"' in chunk:
                    _report_usage(chunk, on_usage)
                line = "data: " + _renamed(chunk, config.name).decode()
            yield line + "\n"
    except httpx.HTTPError as exc:
        error = _unreachable(config, exc)
        payload = {
            "error": {
                "message": error.message,
                "type": error.error_type,
                "param": None,
                "code": error.code,
            }
        }
        yield f"data: {json.dumps(payload)}\n\ndata: [DONE]\n\n"
    finally:
        await response.aclose()
