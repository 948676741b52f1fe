"""API keys, per-key limits, CORS and request ids, on a live server with the real model."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from server.app import create_app
from tests.conftest import LiveServer, make_settings

CHAT = "/v1/chat/completions"
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.toml"
    keys_file.write_text(
        """
[[keys]]
name = "capped"
key = "sk-capped"
max_tokens = 3

[[keys]]
name = "slow"
key = "sk-slow"
requests_per_minute = 2

[[keys]]
name = "single"
key = "sk-single"
max_concurrent = 1
"""
    )
    settings = make_settings(
        api_keys=["sk-plain"],
        api_keys_file=str(keys_file),
        cors_origins=["https://app.example"],
        models=[m for m in make_settings().models if m.name == "smollm2"],
    )
    with LiveServer(create_app(settings), settings) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_no_key_or_a_wrong_key_is_401(http: httpx.Client) -> None:
    for headers in ({}, bearer("sk-nope"), {"Authorization": "Basic abc"}):
        response = http.post(CHAT, json=BODY, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_valid_key_is_served_in_any_of_the_usual_headers(http: httpx.Client) -> None:
    for headers in (bearer("sk-plain"), {"x-api-key": "sk-plain"}, {"api-key": "sk-plain"}):
        assert http.post(CHAT, json=BODY, headers=headers).status_code == 200


def test_probes_and_metrics_need_no_key(http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    assert http.get("/ready").json()["status"] == "ready"
    assert http.get("/metrics").status_code == 200
    assert http.get("/v1/models").status_code == 401


def test_a_keys_max_tokens_caps_the_completion(http: httpx.Client) -> None:
    body = {**BODY, "max_tokens": 50, "temperature": 0}
    capped = http.post(CHAT, json=body, headers=bearer("sk-capped")).json()
    assert capped["usage"]["completion_tokens"] <= 3
    assert capped["choices"][0]["finish_reason"] == "length"


def test_over_the_requests_per_minute_is_429_with_retry_after(http: httpx.Client) -> None:
    statuses = [http.post(CHAT, json=BODY, headers=bearer("sk-slow")) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    refused = statuses[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_a_running_stream_holds_the_keys_concurrency_until_it_ends(
    server: LiveServer, http: httpx.Client
) -> None:
    # Counting keeps the model going for the whole max_tokens (about two seconds).
    body = {"model": "smollm2", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 300, "stream": True}
    with http.stream("POST", "/v1/completions", json=body, headers=bearer("sk-single")) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data:")
        second = http.post(CHAT, json=BODY, headers=bearer("sk-single"))
        assert second.status_code == 429
        assert list(lines)[-2:] == ["data: [DONE]", ""]
    assert http.post(CHAT, json=BODY, headers=bearer("sk-single")).status_code == 200


def test_request_ids_are_returned_and_a_clients_own_is_kept(http: httpx.Client) -> None:
    fresh = http.post(CHAT, json=BODY, headers=bearer("sk-plain"))
    assert fresh.headers["x-request-id"].startswith("req_")
    mine = http.post(CHAT, json=BODY, headers={**bearer("sk-plain"), "X-Request-Id": "trace-42"})
    assert mine.headers["x-request-id"] == "trace-42"
    odd = http.post(CHAT, json=BODY, headers={**bearer("sk-plain"), "X-Request-Id": "a b\tc"})
    assert odd.headers["x-request-id"].startswith("req_")
    assert http.post(CHAT, json=BODY).headers["x-request-id"].startswith("req_")  # 401s too


def test_cors_allows_the_configured_origin_only(http: httpx.Client) -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    allowed = http.options(CHAT, headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    denied = http.options(CHAT, headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in denied.headers
    answer = http.post(CHAT, json=BODY, headers={"Origin": "https://app.example"})
    assert answer.status_code == 401
    assert answer.headers["access-control-allow-origin"] == "https://app.example"


def test_concurrent_requests_from_many_keys_all_finish(http: httpx.Client) -> None:
    statuses: list[int] = []

    def call() -> None:
        statuses.append(http.post(CHAT, json=BODY, headers=bearer("sk-plain")).status_code)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [200] * 6
