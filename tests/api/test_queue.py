"""The request queue on the real engine: full gives 429, waiting too long gives 503."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.app import create_app
from server.engine.loop import EngineLoop
from tests.conftest import LiveServer, make_settings

LONG = {"model": "smollm2", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 900, "temperature": 0}


@pytest.fixture(scope="module")
def one_slot_server() -> Iterator[LiveServer]:
    settings = make_settings(slots=1, max_queue=1, queue_timeout=1.5)
    with LiveServer(create_app(settings)) as server:
        yield server


def scheduler_of(server: LiveServer) -> EngineLoop:
    scheduler: EngineLoop = server.app.state.hearth.registry.loaded_handle("smollm2").engine
    return scheduler


def wait_for(condition: Any, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_full_queue_is_429_with_retry_after_and_timeout_is_503(one_slot_server: LiveServer) -> None:
    scheduler = scheduler_of(one_slot_server)
    with (
        httpx.Client(base_url=one_slot_server.base_url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as running,
    ):
        # Keep the line iterator alive: discarding it mid-stream closes the connection.
        lines = running.iter_lines()
        next(lines)  # the long request holds the only slot
        wait_for(lambda: scheduler.stats().running == 1)

        waiting: dict[str, httpx.Response] = {}
        waiter = threading.Thread(
            target=lambda: waiting.update(
                r=httpx.post(
                    one_slot_server.base_url + "/v1/completions",
                    json={**LONG, "max_tokens": 2},
                    timeout=60,
                )
            )
        )
        waiter.start()
        wait_for(lambda: scheduler.stats().queued == 1)

        full = http.post("/v1/completions", json={**LONG, "max_tokens": 2})
        assert full.status_code == 429
        assert full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["Retry-After"]) >= 1
        # A stream that cannot queue is refused before it starts, not with an error event.
        chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
        full_stream = http.post("/v1/chat/completions", json=chat)
        assert full_stream.status_code == 429
        assert full_stream.json()["error"]["code"] == "queue_full"

        waiter.join(30)
        timed_out = waiting["r"]
        assert timed_out.status_code == 503
        assert timed_out.json()["error"]["code"] == "queue_timeout"
        assert int(timed_out.headers["Retry-After"]) >= 1
        assert scheduler.stats().running == 1  # the running stream was never interrupted
        assert next(lines) is not None
    wait_for(lambda: scheduler.stats().running == 0)
    after = httpx.post(
        one_slot_server.base_url + "/v1/completions", json={**LONG, "max_tokens": 2}, timeout=60
    )
    assert after.status_code == 200
