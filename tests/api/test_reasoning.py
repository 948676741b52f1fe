"""Reasoning output on a real model: SmolLM2 with a chat template that opens a think block,
and a logit_bias that makes it close one ("</think>" is three tokens, so the tag always spans
tokens). The split must equal the raw output cut at the tag, whole and streamed, in chat and
in the Responses API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from anthropic.types import RawContentBlockDeltaEvent, RawMessageStreamEvent, ThinkingDelta
from fastapi.testclient import TestClient
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from server.app import create_app
from tests.api.sse import sse_chunks
from tests.conftest import make_settings

THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is not defined or enable_thinking %}<think>\n{% endif %}{% endif %}"
    "{# the answer follows </think> #}"
)
QUESTION = [{"role": "user", "content": "What is 2+2?"}]
# "</", "think", ">": enough to make SmolLM2 close the block it was put in, and write on.
CLOSE_TAG_BIAS = {"9617": 5, "17400": 8, "46": 8}
EVENT = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    smollm2 = next(m for m in make_settings().models if m.name == "smollm2")
    models = [
        smollm2.model_copy(
            update={"name": "thinker", "aliases": [], "chat_template": THINKING_TEMPLATE}
        ),
        smollm2.model_copy(
            update={
                "name": "raw",
                "aliases": [],
                "chat_template": THINKING_TEMPLATE,
                "reasoning": "none",
                "preload": False,
            }
        ),
    ]
    with TestClient(create_app(make_settings(models=models))) as test_client:
        # The answers compared below, of either model, all read the prompt from the cache
        # alike: these requests only put it there. A prompt read whole and one read from the
        # cache may round differently on some CPUs (docs/development.md, "What holds on which CPU").
        for model in ("thinker", "raw"):
            assert chat(test_client, model, max_tokens=1).status_code == 200
        yield test_client


def chat(client: TestClient, model: str, **fields: Any) -> Any:
    body = {
        "model": model,
        "messages": QUESTION,
        "max_tokens": 40,
        "temperature": 0,
        "logit_bias": CLOSE_TAG_BIAS,
        **fields,
    }
    return client.post("/v1/chat/completions", json=body)


@pytest.fixture(scope="module")
def expected(client: TestClient) -> tuple[str, str]:
    """The raw output (a model with reasoning = "none"), cut at the first closing tag."""
    raw = chat(client, "raw").json()
    text = raw["choices"][0]["message"]["content"]
    assert "reasoning_content" not in raw["choices"][0]["message"]
    assert "completion_tokens_details" not in raw["usage"]
    assert "</think>" in text, text
    reasoning, _, content = text.partition("</think>")
    assert reasoning and content.strip()
    return reasoning, content.lstrip()


def test_chat_splits_thinking_from_the_answer(
    client: TestClient, expected: tuple[str, str]
) -> None:
    answer = chat(client, "thinker").json()
    message = answer["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == expected
    assert message["reasoning"] == message["reasoning_content"]
    spent = answer["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < spent < answer["usage"]["completion_tokens"]


def test_a_streamed_chat_splits_the_same(client: TestClient, expected: tuple[str, str]) -> None:
    chunks = sse_chunks(
        chat(client, "thinker", stream=True, stream_options={"include_usage": True})
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content", "") for d in deltas)
    assert (reasoning, content) == expected
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_the_responses_api_returns_reasoning_items_whole_and_streamed(client: TestClient) -> None:
    # The Responses API has no logit_bias: SmolLM2 never closes the block here, so all of
    # its output is reasoning, exactly the raw model's output for the same prompt.
    raw = client.post(
        "/v1/chat/completions",
        json={"model": "raw", "messages": QUESTION, "max_tokens": 40, "temperature": 0},
    ).json()["choices"][0]["message"]["content"]
    body = {"model": "thinker", "input": QUESTION, "max_output_tokens": 40, "temperature": 0}
    whole = client.post("/v1/responses", json=body).json()
    reasoning_item = whole["output"][0]
    assert reasoning_item["type"] == "reasoning" and reasoning_item["id"].startswith("rs_")
    assert reasoning_item["content"] == [{"type": "reasoning_text", "text": raw}]
    assert whole["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as answer:
        lines = [line for line in answer.iter_lines() if line.startswith("data:")]
    events = [EVENT.validate_python(json.loads(line[5:])) for line in lines]
    kinds = [e.type for e in events]
    assert "response.reasoning_text.delta" in kinds and "response.reasoning_text.done" in kinds
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    done = next(e for e in events if e.type == "response.reasoning_text.done")
    assert streamed == done.text == raw
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    assert final.response.output[0].type == "reasoning"


def test_template_kwargs_reach_the_template(client: TestClient) -> None:
    thinking = chat(client, "thinker").json()
    plain = chat(client, "thinker", chat_template_kwargs={"enable_thinking": False}).json()
    # Without "<think>\n" at the end of the prompt the output does not start as reasoning.
    assert plain["usage"]["prompt_tokens"] < thinking["usage"]["prompt_tokens"]
    assert plain["choices"][0]["message"].get("reasoning_content") in (None, "")


def test_anthropic_thinking_comes_back_as_thinking_blocks(client: TestClient) -> None:
    body: dict[str, Any] = {
        "model": "thinker",
        "max_tokens": 12,
        "temperature": 0,
        "messages": QUESTION,
    }
    enabled = {**body, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    client.post("/v1/messages", json={**enabled, "max_tokens": 1})  # in the cache (see above)
    blocks = client.post("/v1/messages", json=enabled).json()["content"]
    # SmolLM2 never closes the block it was put in unless pushed: all of it is thinking.
    assert blocks[0]["type"] == "thinking"
    assert blocks[0]["thinking"]
    assert blocks[0]["signature"] == ""
    adapter: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
    streamed = []
    # Streamed while the slot still holds this prompt, to read it alike.
    with client.stream("POST", "/v1/messages", json={**enabled, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"ping"' not in line:
                streamed.append(adapter.validate_json(line[6:]))
    deltas = [e.delta for e in streamed if isinstance(e, RawContentBlockDeltaEvent)]
    assert all(isinstance(d, ThinkingDelta) for d in deltas)
    assert (
        "".join(d.thinking for d in deltas if isinstance(d, ThinkingDelta)) == blocks[0]["thinking"]
    )
    plain = client.post("/v1/messages", json={**body, "thinking": {"type": "disabled"}})
    assert [b["type"] for b in plain.json()["content"]] == ["text"]


def test_ollama_think_returns_the_thinking_apart(client: TestClient) -> None:
    body: dict[str, Any] = {
        "model": "thinker",
        "messages": QUESTION,
        "stream": False,
        "options": {"temperature": 0, "num_predict": 12},
    }
    thinking = client.post("/api/chat", json={**body, "think": True}).json()["message"]
    assert thinking["thinking"]
    assert thinking["content"] == ""
    plain = client.post("/api/chat", json={**body, "think": False}).json()["message"]
    assert "thinking" not in plain
    assert plain["content"]


def test_anthropic_count_tokens_renders_with_the_thinking_switch(client: TestClient) -> None:
    body: dict[str, Any] = {"model": "thinker", "messages": QUESTION}
    on = client.post(
        "/v1/messages/count_tokens",
        json={**body, "thinking": {"type": "enabled", "budget_tokens": 1024}},
    )
    off = client.post("/v1/messages/count_tokens", json={**body, "thinking": {"type": "disabled"}})
    # The template opens a think block only when thinking is on.
    assert on.json()["input_tokens"] > off.json()["input_tokens"]
