"""GET /metrics after real requests: what each metric family reports."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from tests.conftest import LiveServer, make_settings


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


def test_router_signals_follow_a_running_stream_under_vllm_names_too() -> None:
    """What inference routers pick replicas by: requests waiting and running, and the share
    of KV cells in use, under Hearth's names and, with metrics_compat = "vllm", vLLM's."""
    settings = make_settings(metrics_compat="vllm")
    with LiveServer(create_app(settings), settings) as server:
        metrics = f"{server.base_url}/metrics"

        def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            return {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(httpx.get(metrics).text)
                for sample in family.samples
            }

        idle = scrape()
        cells = 8 * 1024
        assert value(idle, "hearth_kv_cache_cells", model="smollm2") == cells
        assert value(idle, "hearth_kv_cache_usage", model="smollm2") == 0
        geometry = {"model_name": "smollm2", "block_size": "1", "num_gpu_blocks": str(cells)}
        assert value(idle, "vllm:cache_config_info", **geometry) == 1
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
            "max_tokens": 400,
            "stream": True,
        }
        with (
            httpx.Client(base_url=server.base_url, timeout=120) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: {") and '"content"' in line:
                    break
            busy = scrape()
        assert value(busy, "hearth_slots_busy", model="smollm2") == 1
        assert value(busy, "vllm:num_requests_running", model_name="smollm2") == 1
        assert value(busy, "vllm:num_requests_waiting", model_name="smollm2") == 0
        usage = value(busy, "hearth_kv_cache_usage", model="smollm2")
        # The prompt and the first tokens, out of 8,192 cells.
        assert 10 / cells < usage < 400 / cells
        assert value(busy, "vllm:kv_cache_usage_perc", model_name="smollm2") == usage
        assert value(busy, "vllm:gpu_cache_usage_perc", model_name="smollm2") == usage


def test_vllm_names_are_off_by_default(client: TestClient) -> None:
    assert "vllm:" not in client.get("/metrics").text


def test_the_metric_names_the_kubernetes_examples_use_are_exported(client: TestClient) -> None:
    """docker/k8s/inference names Hearth's metrics for the endpoint picker and the autoscaler."""
    exported = {
        family.name for family in text_string_to_metric_families(client.get("/metrics").text)
    }
    inference = Path(__file__).resolve().parents[2] / "docker" / "k8s" / "inference"
    named = {
        name
        for path in inference.glob("*.yaml")
        for name in re.findall(r"\bhearth_[a-z_]+", path.read_text())
    }
    assert {"hearth_queue_depth", "hearth_slots_busy", "hearth_kv_cache_usage"} <= named
    assert named <= exported
