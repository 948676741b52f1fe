"""SIGTERM: new work gets 503, running streams finish, the server exits cleanly."""

from __future__ import annotations

import json
import signal

import httpx

from server.app import create_app
from tests.conftest import LiveServer, make_settings


def test_shutdown_refuses_new_work_and_lets_running_streams_finish() -> None:
    settings = make_settings(shutdown_grace=30)
    live = LiveServer(create_app(settings), settings)
    with live:
        body = {
            "model": "smollm2",
            "prompt": "1, 2, 3,",
            "max_tokens": 120,
            "temperature": 0,
            "stream": True,
        }
        with (
            httpx.Client(base_url=live.base_url, timeout=60) as http,
            http.stream("POST", "/v1/completions", json=body) as running,
        ):
            lines = running.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert json.loads(first[5:])["choices"][0]["finish_reason"] is None

            # What SIGTERM does first: from now on, new requests are turned away...
            live.app.state.hearth.begin_shutdown()
            refused = httpx.post(
                live.base_url + "/v1/completions", json={**body, "stream": False}, timeout=30
            )
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "shutting_down"
            assert "Retry-After" in refused.headers

            # ... then uvicorn's own exit, which waits for the running stream.
            live.server.handle_exit(signal.SIGTERM, None)
            events = [line[5:].strip() for line in lines if line.startswith("data:")]
        assert events[-1] == "[DONE]"
        finals = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]]
        assert finals[-1] == "length"
    assert not live.running  # uvicorn returned: the lifespan closed the models and exited
