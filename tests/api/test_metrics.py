"""GET /metrics after real requests: what each metric family reports."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    data: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return data.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_tokens_and_latencies_are_counted(client: TestClient) -> None:
    before = samples(client)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    reply = client.post("/v1/chat/completions", json=body).json()
    client.post("/v1/chat/completions", json={**body, "stream": True})
    client.post("/v1/chat/completions", json={**body, "model": "nope"})
    client.post("/v1/embeddings", json={"model": "smollm2", "input": "hello"})
    after = samples(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    chat = {"route": "/v1/chat/completions", "model": "smollm2"}
    assert grew("hearth_requests_total", **chat, status="200") == 2
    assert grew("hearth_requests_total", route="/v1/chat/completions", model="", status="404") == 1
    assert grew("hearth_request_duration_seconds_count", **chat) == 2
    assert (
        grew("hearth_tokens_total", model="smollm2", kind="completion")
        >= reply["usage"]["completion_tokens"]
    )
    assert (
        grew("hearth_tokens_total", model="smollm2", kind="prompt")
        == 2 * reply["usage"]["prompt_tokens"]
    )
    assert grew("hearth_tokens_total", model="smollm2", kind="embedding") >= 1
    assert grew("hearth_time_to_first_token_seconds_count", model="smollm2") == 2
    assert grew("hearth_queue_wait_seconds_count", model="smollm2") == 2


def test_engine_and_model_state_are_read_at_scrape_time(client: TestClient) -> None:
    data = samples(client)
    assert value(data, "hearth_model_loaded", model="smollm2") == 1
    assert value(data, "hearth_model_loads_total", model="smollm2") >= 1
    assert value(data, "hearth_slots", model="smollm2") == 8
    assert value(data, "hearth_slots_busy", model="smollm2") == 0
    assert value(data, "hearth_queue_depth", model="smollm2") == 0
    assert ("hearth_model_requests_active", (("model", "smollm2"),)) in data
    assert (
        value(data, "hearth_prefix_cache_hits_total", model="smollm2")
        + value(data, "hearth_prefix_cache_misses_total", model="smollm2")
        >= 1
    )
    assert ("hearth_kv_state_bytes", (("model", "smollm2"), ("store", "ram"))) in data
