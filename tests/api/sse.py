"""Reading an SSE response the way an OpenAI client does."""

from __future__ import annotations

import json
from typing import Any, Protocol


class HasText(Protocol):
    """A response of any HTTP client (httpx, or the test client's)."""

    @property
    def text(self) -> str: ...


def sse_events(response: HasText) -> list[str]:
    """Every ``data:`` payload, in order."""
    return [
        line[len("data:") :].strip()
        for line in response.text.splitlines()
        if line.startswith("data:")
    ]


def sse_chunks(response: HasText) -> list[dict[str, Any]]:
    """The JSON chunks of a stream, after checking it ends with exactly one [DONE]."""
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert events.count("[DONE]") == 1
    return [json.loads(e) for e in events[:-1]]
