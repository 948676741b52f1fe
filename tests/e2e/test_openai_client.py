"""The official `openai` client against a real uvicorn server running the real engine."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from server.engine.loop import EngineLoop
from tests.conftest import (
    LiveServer,
    Pick,
    assert_close_runs,
    batches_are_exact,
    chat_picks,
    make_settings,
)

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "List three fruits."}]


def test_chat_completion(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16)
    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content
    assert response.usage is not None and response.usage.completion_tokens <= 16


def test_chat_stream_with_usage_matches_the_non_streamed_text(client: openai.OpenAI) -> None:
    # Both read the prompt from the cache alike: the first request only puts it there. A
    # prompt read whole and one read from the cache may round differently on some CPUs
    # (docs/development.md, "What holds on which CPU"), which is not what this compares.
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name a red fruit."}]
    client.chat.completions.create(model="smollm2", messages=question, max_tokens=1)
    whole = client.chat.completions.create(
        model="smollm2", messages=question, max_tokens=30, temperature=0
    )
    stream = client.chat.completions.create(
        model="smollm2",
        messages=question,
        max_tokens=30,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[
        0
    ].finish_reason


def test_text_completion_and_stream(client: openai.OpenAI) -> None:
    client.completions.create(model="gemma3-270m", prompt="Water boils at", max_tokens=1)
    response = client.completions.create(
        model="gemma3-270m", prompt="Water boils at", max_tokens=8, temperature=0
    )
    assert response.object == "text_completion"
    streamed = client.completions.create(
        model="gemma3-270m", prompt="Water boils at", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == response.choices[0].text


def test_models_list(client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list()} == {"smollm2", "gemma3-270m"}
    assert client.models.retrieve("smollm2").id == "smollm2"


def test_errors_surface_as_the_sdks_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as no_template:
        client.chat.completions.create(model="gemma3-270m", messages=QUESTION)
    assert no_template.value.code == "chat_template_missing"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="smollm2", prompt="word " * 1500, stream=True)
    assert too_long.value.code == "context_length_exceeded"


def test_eight_streams_at_once_match_what_each_gets_alone(client: openai.OpenAI) -> None:
    """8 slots, 8 concurrent streams: each completes with its own token count, and at
    temperature 0 each text equals what that request gets alone (no cross-talk): exactly
    where the load-time check finds batches exact, else as far as the margins go (a stream
    beside others is decoded in bigger batches, which may round differently)."""
    topics = ["cats", "the sea", "robots", "winter", "trains", "the moon", "bread", "music"]
    messages: list[list[ChatCompletionMessageParam]] = [
        [{"role": "user", "content": f"Write two sentences about {t}."}] for t in topics
    ]
    alone = [
        client.chat.completions.create(
            model="smollm2",
            messages=m,
            max_tokens=48,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
        )
        for m in messages
    ]
    results: dict[int, tuple[str, int, list[Pick]]] = {}
    start = threading.Barrier(len(topics))

    def worker(i: int) -> None:
        start.wait()
        stream = client.chat.completions.create(
            model="smollm2",
            messages=messages[i],
            max_tokens=48,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        entries = [
            entry.model_dump()
            for c in chunks
            if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content
            for entry in c.choices[0].logprobs.content
        ]
        assert chunks[-1].usage is not None
        picks = chat_picks({"logprobs": {"content": entries}})
        results[i] = (text, chunks[-1].usage.completion_tokens, picks)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(topics))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    exact = batches_are_exact(make_settings())  # the live server's
    for i, reply in enumerate(alone):
        text, tokens, picks = results[i]
        assert "".join(p.token for p in picks) == text
        assert reply.usage is not None
        if exact:
            assert (text, tokens) == (
                reply.choices[0].message.content,
                reply.usage.completion_tokens,
            )
        else:
            assert_close_runs(chat_picks(reply.choices[0].model_dump()), picks)


def _scheduler(live_server: LiveServer) -> EngineLoop:
    scheduler: EngineLoop = live_server.app.state.hearth.registry.loaded_handle("smollm2").engine
    return scheduler


def wait_until_idle(scheduler: EngineLoop) -> None:
    """Poll (bounded) until no slot is busy; a slot still busy after 10 s fails the test."""
    deadline = time.monotonic() + 10
    while scheduler.stats().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.stats().running == 0


def test_disconnecting_a_stream_frees_the_slot_at_once(
    live_server: LiveServer, client: openai.OpenAI
) -> None:
    scheduler = _scheduler(live_server)
    cancelled_before = scheduler.stats().finished.get("cancelled", 0)
    body = {
        "model": "smollm2",
        "prompt": "1, 2, 3, 4, 5, 6,",
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
    }
    with (
        httpx.Client(base_url=live_server.base_url, timeout=30) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        received = 0
        for line in lines:
            if line.startswith("data:"):
                received += 1
            if received >= 3:
                break
        assert scheduler.stats().running == 1
    # The connection is closed: the engine must drop the sequence at its next step.
    wait_until_idle(scheduler)
    assert (
        scheduler.stats().finished.get("cancelled", 0) == cancelled_before + 1
    )  # cancelled, not run to its end
    assert scheduler.stats().queued == 0
    quick = client.completions.create(model="smollm2", prompt="Hi", max_tokens=2)
    assert quick.choices[0].text is not None


def test_disconnecting_a_non_streamed_request_cancels_it(live_server: LiveServer) -> None:
    scheduler = _scheduler(live_server)
    cancelled_before = scheduler.stats().finished.get("cancelled", 0)
    body = {"model": "smollm2", "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 900, "temperature": 0}
    with (
        httpx.Client(base_url=live_server.base_url, timeout=0.5) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        http.post("/v1/completions", json=body)
    wait_until_idle(scheduler)
    assert scheduler.stats().finished.get("cancelled", 0) == cancelled_before + 1
