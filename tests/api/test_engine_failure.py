"""If a model's engine thread ever dies, the model is marked failed, /ready says so, and the
next request loads it afresh instead of waiting on a dead loop."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import make_settings

BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def test_a_dead_engine_is_reported_and_reloaded() -> None:
    settings = make_settings(models=[m for m in make_settings().models if m.name == "smollm2"])
    with TestClient(create_app(settings)) as client:
        state = client.app.state.hearth  # type: ignore[attr-defined]
        handle = state.registry.loaded_handle("smollm2")
        assert client.get("/ready").status_code == 200

        def broken(*_args: Any) -> int:
            raise ValueError("a bug in the loop")

        handle.backend.sample = broken  # the next step raises on the engine thread
        failed = client.post("/v1/chat/completions", json=BODY)
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "engine_error"
        ready = client.get("/ready")
        assert ready.status_code == 503 and "stopped" in ready.json()["error"]["message"]

        answer = client.post("/v1/chat/completions", json=BODY)
        assert answer.status_code == 200, answer.text
        assert state.registry.loaded_handle("smollm2") is not handle
        assert client.get("/ready").status_code == 200
