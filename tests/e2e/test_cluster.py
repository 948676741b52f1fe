"""Two Hearth replicas behind the SGLang model gateway (`hearth cluster`'s launcher): answers
arrive through the router, conversations started together spread over both replicas, and with
the cache_aware policy every conversation's second turn goes to the replica that holds its
first turn, whose KV prefix it reuses."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from server.cluster import Cluster
from tests.conftest import free_port, model_file

pytest.importorskip("sglang_router")


def config(tmp: Path) -> Path:
    path = tmp / "models.toml"
    path.write_text(
        "[[models]]\n"
        'name = "smollm2"\n'
        f'path = "{model_file("smollm2")}"\n'
        "n_ctx = 1024\nslots = 2\nthreads = 1\npreload = true\n"
    )
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    group = Cluster(
        replicas=2,
        port=free_port(),
        worker_ports=[free_port(), free_port()],
        policy="cache_aware",
        serve_args=["--config", str(config(tmp)), "--responses-db", str(tmp / "r.sqlite3")],
        replica_env={"HEARTH_KV_CACHE_DISK_BYTES": "0", "HEARTH_LOG_LEVEL": "warning"},
        log_dir=tmp / "logs",
    )
    with group:
        yield group


def served(url: str) -> float:
    """Chat completions a replica answered, from its own metrics."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)
        for sample in family.samples
        if sample.name == "hearth_requests_total"
        and sample.labels["route"] == "/v1/chat/completions"
        and sample.labels["status"] == "200"
    )


def test_conversations_spread_and_second_turns_find_their_prefix(cluster: Cluster) -> None:
    client = OpenAI(base_url=cluster.url + "/v1", api_key="unused", max_retries=0)
    # Three: a round robin router would send at least one second turn elsewhere.
    topics = ["the sea", "mountains", "a city at night"]
    conversations: list[list[ChatCompletionMessageParam]] = [
        [
            {"role": "system", "content": f"You are a poet who only writes about {topic}. " * 8},
            {"role": "user", "content": f"Write two lines about {topic}."},
        ]
        for topic in topics
    ]

    def first_turn(messages: list[ChatCompletionMessageParam]) -> str:
        reply = client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=24, temperature=0
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(len(conversations)) as pool:  # at once: the router spreads them
        answers = list(pool.map(first_turn, conversations))
    assert all(answers)
    assert all(served(url) >= 1 for url in cluster.worker_urls)
    for messages, answer in zip(conversations, answers, strict=True):
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Another."},
        ]
        reply = client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=8, temperature=0
        )
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        cached = reply.usage.prompt_tokens_details.cached_tokens or 0
        # The first turn's prompt and answer came from the KV cache of the replica that
        # answered it: the router sent the second turn there.
        assert cached > reply.usage.prompt_tokens // 2, (cached, reply.usage.prompt_tokens)
