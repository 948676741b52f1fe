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

[[keys]]
name = "budget"
key = "sk-budget"
tokens_per_minute = 300

[[keys]]
name = "budget-crowd"
key = "sk-budget-crowd"
tokens_per_minute = 300

[[keys]]
name = "budget-long"
key = "sk-budget-long"
tokens_per_minute = 60
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


def test_a_prompt_refused_for_tokens_per_minute_is_not_charged(http: httpx.Client) -> None:
    # About 400 tokens: more than the key may use in a minute, refused before it runs.
    big = {"model": "smollm2", "prompt": " hello" * 400, "max_tokens": 1}
    refused = http.post("/v1/completions", json=big, headers=bearer("sk-budget"))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    # Nothing was served, so nothing was booked: a small request is served at once (it was
    # refused for a minute).
    hello = http.post(CHAT, json=BODY, headers=bearer("sk-budget"))
    assert hello.status_code == 200, hello.text
    assert hello.json()["choices"][0]["message"]["content"]


def test_concurrent_chats_share_the_tokens_per_minute_and_are_served(
    http: httpx.Client,
) -> None:
    # Twelve chats of some 35 prompt tokens each at 300 tokens per minute: those whose prompts
    # fit are served (cut short, as at max_tokens, once the key's tokens run out); the rest
    # are refused with 429 and charged nothing. They used to be all refused, 442 tokens booked.
    answers: list[httpx.Response] = []
    body = {**BODY, "max_tokens": 16, "temperature": 0}

    def call() -> None:
        answers.append(http.post(CHAT, json=body, headers=bearer("sk-budget-crowd")))

    threads = [threading.Thread(target=call) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 12
    served = [a.json() for a in answers if a.status_code == 200]
    assert {a.status_code for a in answers} <= {200, 429}
    assert served, [a.text for a in answers]
    for answer in served:
        assert answer["choices"][0]["finish_reason"] in ("stop", "length")
        assert answer["usage"]["completion_tokens"] >= 1
    # What was served is what was charged: at most a token over the limit per running chat.
    assert sum(a["usage"]["total_tokens"] for a in served) <= 300 + len(served)


def test_a_whole_answer_that_runs_out_of_tokens_per_minute_is_served_as_far_as_it_got(
    http: httpx.Client,
) -> None:
    # Counting without end, at 60 tokens per minute: the answer stops where the key's tokens
    # ran out, as at a max_tokens, and what it made is answered (it used to be a 429 with
    # all of it charged and none of it sent).
    body = {
        "model": "smollm2",
        "prompt": "1, 2, 3,",
        "max_tokens": 200,
        "temperature": 0,
        "logit_bias": {"0": -100, "2": -100},
    }
    answer = http.post("/v1/completions", json=body, headers=bearer("sk-budget-long"))
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["choices"][0]["text"]
    assert 40 < data["usage"]["total_tokens"] <= 61
    # The key is over its limit now: the next request is refused before it runs.
    refused = http.post("/v1/completions", json=body, headers=bearer("sk-budget-long"))
    assert refused.status_code == 429
