"""Remote models: a front Hearth proxying to a second Hearth (the shared live server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.models.config import ModelConfig
from server.services.upstream import UpstreamService
from tests.api.sse import sse_chunks
from tests.conftest import LiveServer, make_settings

QUESTION = [{"role": "user", "content": "Name a colour."}]


def remote(name: str, url: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "upstream": url, "upstream_model": "smollm2", **fields}


@pytest.fixture(scope="module")
def front(live_server: LiveServer) -> Iterator[TestClient]:
    settings = make_settings(
        models=[
            remote("far", live_server.base_url + "/v1"),
            remote("down", "http://127.0.0.1:9/v1"),
            remote("impatient", live_server.base_url + "/v1", upstream_timeout=0.05),
        ]
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_chat_is_proxied_and_named_as_here(front: TestClient, live_server: LiveServer) -> None:
    messages = [{"role": "user", "content": "Name a colour of the sky."}]
    body = {"model": "far", "messages": messages, "max_tokens": 8, "temperature": 0}
    # Both answers below read the prompt from the cache alike: this request only puts it
    # there (a prompt read whole may round differently on some CPUs; docs/development.md, "What holds
    # on which CPU").
    url = live_server.base_url + "/v1/chat/completions"
    httpx.post(url, json={**body, "model": "smollm2", "max_tokens": 1}).raise_for_status()
    proxied = front.post("/v1/chat/completions", json=body)
    assert proxied.status_code == 200
    direct = httpx.post(url, json={**body, "model": "smollm2"}).json()
    assert proxied.json()["model"] == "far"
    assert proxied.json()["choices"][0]["message"] == direct["choices"][0]["message"]
    metrics = front.get("/metrics").text
    assert 'hearth_tokens_total{kind="completion",model="far"}' in metrics
    assert 'hearth_requests_total{model="far",route="/v1/chat/completions",status="200"}' in metrics


def test_streams_are_relayed_chunk_by_chunk(front: TestClient) -> None:
    body = {"model": "far", "messages": QUESTION, "max_tokens": 8, "temperature": 0, "stream": True}
    response = front.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    chunks = sse_chunks(response)
    assert len(chunks) >= 3 and all(c["model"] == "far" for c in chunks)
    assert response.text.rstrip().endswith("data: [DONE]")
    before = front.get("/metrics").text
    with_usage = {**body, "stream_options": {"include_usage": True}, "max_tokens": 5}
    last = sse_chunks(front.post("/v1/chat/completions", json=with_usage))[-1]
    produced = last["usage"]["completion_tokens"]
    assert 0 < produced <= 5 and last["model"] == "far"
    assert _completion_tokens(front.get("/metrics").text) == _completion_tokens(before) + produced


def _completion_tokens(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('hearth_tokens_total{kind="completion",model="far"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_embeddings_and_completions_are_proxied(front: TestClient) -> None:
    embedded = front.post("/v1/embeddings", json={"model": "far", "input": "hi"})
    assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 576
    completed = front.post(
        "/v1/completions", json={"model": "far", "prompt": "Hi", "max_tokens": 3}
    )
    assert completed.status_code == 200 and completed.json()["model"] == "far"


def test_upstream_errors_pass_through_with_their_status(front: TestClient) -> None:
    body = {"model": "far", "messages": QUESTION, "max_tokens": 100_000}
    response = front.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_a_down_or_slow_upstream_is_502(front: TestClient) -> None:
    down = front.post("/v1/chat/completions", json={"model": "down", "messages": QUESTION})
    assert down.status_code == 502
    assert down.json()["error"]["code"] == "upstream_unavailable"
    body = {"model": "impatient", "messages": QUESTION, "max_tokens": 200}
    slow = front.post("/v1/chat/completions", json=body)
    assert slow.status_code == 502 and "timed out" in slow.json()["error"]["message"]


def test_remote_models_are_listed_as_such(front: TestClient) -> None:
    cards = {c["id"]: c for c in front.get("/v1/models").json()["data"]}
    assert cards["far"]["remote"] is True and cards["far"]["loaded"] is True
    assert front.get("/ready").status_code == 200


def test_the_upstream_gets_its_own_name_and_key() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "model": "theirs", "data": []})

    async def scenario() -> bytes:
        service = UpstreamService(transport=httpx.MockTransport(answer))
        config = ModelConfig(
            name="ours", upstream="http://up/v1", upstream_model="theirs", upstream_api_key="sk-up"
        )
        result = await service.forward(
            config, "/embeddings", {"model": "ours", "input": "x"}, stream=False
        )
        await service.aclose()
        return result.body

    import asyncio

    body = asyncio.run(scenario())
    (request,) = seen
    assert str(request.url) == "http://up/v1/embeddings"
    assert request.headers["authorization"] == "Bearer sk-up"
    assert json.loads(request.content) == {"model": "theirs", "input": "x"}
    assert json.loads(body)["model"] == "ours"


def test_only_known_fields_go_upstream_and_streams_always_report_usage() -> None:
    seen: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        chunk = {
            "id": "c",
            "model": "theirs",
            "choices": [{"index": 0, "delta": {"content": "hi"}}],
        }
        # Usage on every chunk, cumulative (vLLM's continuous usage stats): the last counts.
        early = {**chunk, "usage": {"prompt_tokens": 3, "completion_tokens": 0}}
        usage = {
            "id": "c",
            "model": "theirs",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in (early, usage)) + "data: [DONE]\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    settings = make_settings(
        models=[remote("far", "http://up/v1", max_tokens_cap=5)],
    )
    app = create_app(settings)
    with TestClient(app) as client:
        app.state.hearth.upstream = UpstreamService(transport=httpx.MockTransport(answer))
        body = {
            "model": "far",
            "messages": QUESTION,
            "stream": True,
            "max_tokens": 50,
            "priority": 5,
            "keep_alive": "5m",
            "some_future_field": {"x": 1},
        }
        response = client.post("/v1/chat/completions", json=body)
        chunks = sse_chunks(response)
        metrics = client.get("/metrics").text
    (sent,) = seen
    assert "some_future_field" not in sent and "priority" not in sent and "keep_alive" not in sent
    assert sent["max_tokens"] == 5  # the model's cap
    assert sent["stream_options"] == {"include_usage": True}
    # The client did not ask for usage: none is relayed, but it was counted.
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["hi"]
    assert all("usage" not in c for c in chunks)
    assert 'hearth_tokens_total{kind="prompt",model="far"} 3.0' in metrics
    assert 'hearth_tokens_total{kind="completion",model="far"} 1.0' in metrics
