"""Two Hearth replicas (separate processes) sharing one KV state folder: a conversation whose
second turn goes to the other replica starts from the state the first replica saved, and
answers exactly as the first replica would have."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from server.cluster import Cluster
from tests.conftest import free_port, model_file


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("shared-kv")
    config = tmp / "models.toml"
    config.write_text(
        "[[models]]\n"
        'name = "smollm2"\n'
        f'path = "{model_file("smollm2")}"\n'
        'n_ctx = 1024\nslots = 2\nthreads = 1\npreload = true\nflash_attn = "off"\n'
    )
    group = Cluster(
        replicas=2,
        worker_ports=[free_port(), free_port()],
        router=False,
        serve_args=["--config", str(config), "--responses-db", str(tmp / "r.sqlite3")],
        replica_env={
            "HEARTH_KV_CACHE_DIR": str(tmp / "kv"),  # the same folder for both
            "HEARTH_KV_CACHE_DISK_BYTES": str(256 << 20),
            "HEARTH_KV_CACHE_SCAN_INTERVAL": "0.2",
            "HEARTH_LOG_LEVEL": "warning",
        },
        log_dir=tmp / "logs",
    )
    with group:
        yield group


def metric(url: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_the_second_turn_on_the_other_replica_starts_from_the_first_replicas_state(
    replicas: Cluster,
) -> None:
    first, second = replicas.worker_urls
    conversation: list[ChatCompletionMessageParam] = [
        {
            "role": "system",
            "content": "You are a careful librarian who answers in one sentence. " * 40,
        },
        {"role": "user", "content": "Name a book about the sea."},
    ]

    def ask(url: str, messages: list[ChatCompletionMessageParam]) -> tuple[str, int, int]:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=16, temperature=0
        )
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        cached = reply.usage.prompt_tokens_details.cached_tokens or 0
        return reply.choices[0].message.content or "", cached, reply.usage.prompt_tokens

    answer, _, _ = ask(first, conversation)
    # The first replica saves the idle slot's state to the folder; the second finds it.
    deadline = time.monotonic() + 60
    while metric(second, "hearth_kv_state_shared_total", event="found") < 1:
        assert time.monotonic() < deadline, "the second replica never found the saved state"
        time.sleep(0.2)
    conversation += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And one about mountains?"},
    ]
    moved, cached, prompt_tokens = ask(second, conversation)
    assert cached > prompt_tokens // 2, (cached, prompt_tokens)
    assert metric(second, "hearth_prefix_cache_restores_total", model="smollm2") >= 1
    # The restored state is the first replica's prefix, exactly: the same answer as the
    # replica that holds the conversation in its slot gives.
    stayed, _, _ = ask(first, conversation)
    assert moved == stayed
