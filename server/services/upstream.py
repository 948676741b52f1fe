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

from server.errors import HearthError, UpstreamError
from server.models.config import ModelConfig

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
        on_chunk: Callable[[], None] | None = None,
        keep_usage: bool = True,
    ) -> UpstreamAnswer:
        """POST ``body`` to the upstream's ``path`` (``/chat/completions``, ...). ``on_usage``
        gets the prompt and completion tokens the answer reports. In a stream, ``on_chunk``
        is called for each chunk that carries output (it may raise a HearthError, which ends
        the stream with an error event), and ``keep_usage`` false leaves the usage out of what
        is relayed (the client did not ask for it)."""
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
                _report_usage(_json(raw), on_usage)
            return UpstreamAnswer(response.status_code, content_type, _renamed(raw, config.name))
        relay = _Relay(config, on_usage, on_chunk, keep_usage)
        return UpstreamAnswer(200, content_type, lines=relay.lines(response))


def _unreachable(config: ModelConfig, exc: Exception) -> UpstreamError:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    logger.warning("upstream for model %s %s: %r", config.name, kind, exc)
    return UpstreamError(
        f"the upstream server for model '{config.name}' ({config.upstream}) {kind}: "
        f"{type(exc).__name__}",
        retry_after=5,
    )


UsageSink = Callable[[int, int], None]


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _report_usage(data: Any, on_usage: UsageSink) -> None:
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return
    try:
        on_usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
    except (ValueError, TypeError):
        return


def _renamed(raw: bytes, name: str) -> bytes:
    """The JSON answer with its ``model`` set to this server's name (others unchanged)."""
    data = _json(raw)
    if isinstance(data, dict) and "model" in data:
        data["model"] = name
        return json.dumps(data, ensure_ascii=False).encode()
    return raw


def _has_output(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        text = choice.get("text") if isinstance(choice, dict) else None
        if text or (isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls"))):
            return True
    return False


@dataclass
class _Relay:
    """An upstream stream, relayed line by line: each ``data:`` chunk renamed, its output
    metered, its usage reported (and left out unless the client asked for it); a break-off or
    a limit ends the stream with an error event and ``[DONE]``, as Hearth's own streams end."""

    config: ModelConfig
    on_usage: UsageSink | None
    on_chunk: Callable[[], None] | None
    keep_usage: bool
    _usage: dict[str, Any] | None = None

    async def lines(self, response: httpx.Response) -> AsyncIterator[str]:
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                    yield line + "\n"
                    continue
                chunk = _json(line[5:].strip().encode())
                if not isinstance(chunk, dict):
                    yield line + "\n"
                    continue
                if chunk.get("usage"):
                    # Reported cumulatively (some servers on every chunk): the last counts.
                    self._usage = chunk
                    if not self.keep_usage:
                        if not chunk.get("choices"):
                            continue  # the usage-only chunk the client did not ask for
                        del chunk["usage"]
                elif not self.keep_usage:
                    chunk.pop("usage", None)
                if self.on_chunk is not None and _has_output(chunk):
                    self.on_chunk()
                if "model" in chunk:
                    chunk["model"] = self.config.name
                yield "data: " + json.dumps(chunk, ensure_ascii=False) + "\n"
        except httpx.HTTPError as exc:
            yield _error_event(_unreachable(self.config, exc))
        except HearthError as exc:  # over a limit while relaying
            yield _error_event(exc)
        finally:
            await response.aclose()
            if self._usage is not None and self.on_usage is not None:
                _report_usage(self._usage, self.on_usage)


def _error_event(error: HearthError) -> str:
    payload = {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }
    return f"data: {json.dumps(payload)}\n\ndata: [DONE]\n\n"
