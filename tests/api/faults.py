"""Hostile values and injected failures the API tests share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi.testclient import TestClient


def nested(depth: int, *, key: str | None = None) -> Any:
    """A JSON value nested ``depth`` deep: lists, or objects under ``key``."""
    value: Any = 1
    for _ in range(depth):
        value = [value] if key is None else {key: value}
    return value


@contextlib.contextmanager
def engine_fails_after(client: TestClient, model: str, samples: int) -> Iterator[None]:
    """The model's engine loop raises (a bug) once it has sampled ``samples`` tokens: a
    failure in the middle of a stream. The model reloads on its next request."""
    handle = client.app.state.hearth.registry.loaded_handle(model)  # type: ignore[attr-defined]
    real = handle.backend.sample
    calls = 0

    def fails_later(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > samples:
            raise ValueError("a bug in the loop")
        return real(*args)

    handle.backend.sample = fails_later
    try:
        yield
    finally:
        handle.backend.sample = real
