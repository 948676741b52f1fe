"""The official `anthropic` SDK against a live Hearth on SmolLM2: messages, streams with the
SDK's own event types, tools and a tool_result round trip, count_tokens, and error types."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    RawMessageStreamEvent,
    TextBlock,
)
from pydantic import TypeAdapter

from tests.conftest import LiveServer

MODEL = "smollm2"
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def body_of(error: anthropic.APIStatusError) -> Any:
    return error.body


def text_of(message: Message) -> str:
    return "".join(b.text for b in message.content if isinstance(b, TextBlock))


@pytest.fixture(scope="module")
def claude(live_server: LiveServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=live_server.base_url, api_key="unused", max_retries=0) as sdk:
        yield sdk


def test_a_message_is_answered_with_a_text_block_and_usage(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=12,
        extra_body={"temperature": 0},
        system="You are terse.",
        messages=[{"role": "user", "content": "Name a colour."}],
    )
    assert isinstance(message, Message)
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.content[0].type == "text"
    assert text_of(message)
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 10
    assert 0 < message.usage.output_tokens <= 12


def test_max_tokens_ends_with_max_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=3,
        extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_a_stop_sequence_is_reported(claude: anthropic.Anthropic) -> None:
    first = claude.messages.create(
        model=MODEL,
        max_tokens=20,
        extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
    )
    text = text_of(first)
    word = text.split(",")[1].strip() if "," in text else text.split()[1]
    message = claude.messages.create(
        model=MODEL,
        max_tokens=20,
        extra_body={"temperature": 0},
        stop_sequences=["zzz", word],
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == word
    assert word not in text_of(message)


def test_stream_events_parse_with_the_sdk_types(live_server: LiveServer) -> None:
    body = {
        "model": MODEL,
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    # Claude Code asks for JSON and reads SSE: the body's stream decides.
    headers = {"accept": "application/json", "anthropic-version": "2023-06-01"}
    events: list[RawMessageStreamEvent] = []
    adapter: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
    with httpx.stream(
        "POST",
        live_server.base_url + "/v1/messages?beta=true",
        json=body,
        headers=headers,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                if name == "ping":
                    continue
                event = adapter.validate_json(line[6:])
                assert event.type == name
                events.append(event)
    kinds = [type(e) for e in events]
    assert kinds[0] is RawMessageStartEvent
    assert kinds[1] is RawContentBlockStartEvent
    assert RawContentBlockDeltaEvent in kinds
    assert kinds[-3:] == [RawContentBlockStopEvent, RawMessageDeltaEvent, RawMessageStopEvent]
    delta = events[-2]
    assert isinstance(delta, RawMessageDeltaEvent)
    assert delta.delta.stop_reason in ("end_turn", "max_tokens")
    assert delta.usage.output_tokens > 0


def test_streamed_text_equals_the_whole_answer(claude: anthropic.Anthropic) -> None:
    request: Any = {
        "model": MODEL,
        "max_tokens": 20,
        "extra_body": {"temperature": 0},
        "messages": [{"role": "user", "content": "What is the capital of Germany?"}],
    }
    # Both read the prompt from the cache alike: the first request only puts it there. A
    # prompt read whole and one read from the cache may round differently on some CPUs
    # (docs/development.md, "What holds on which CPU"), which is not what this compares.
    claude.messages.create(**{**request, "max_tokens": 1})
    whole = claude.messages.create(**request)
    with claude.messages.stream(**request) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == text_of(whole)
    assert text_of(final) == text_of(whole)
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_forced_tool_use_and_a_tool_result_round_trip(claude: anthropic.Anthropic) -> None:
    question: Any = {"role": "user", "content": "What is the weather in Paris?"}
    message = claude.messages.create(
        model=MODEL,
        max_tokens=60,
        extra_body={"temperature": 0},
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[question],
    )
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    assert isinstance(use.input, dict)
    assert isinstance(use.input["city"], str)
    answer = claude.messages.create(
        model=MODEL,
        max_tokens=30,
        extra_body={"temperature": 0},
        tools=[WEATHER],
        messages=[
            question,
            {"role": "assistant", "content": message.content},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use.id,
                        "content": [{"type": "text", "text": "Sunny, 24 degrees"}],
                    }
                ],
            },
        ],
    )
    assert answer.content
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_streamed_tool_use_accumulates_to_the_input(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=60,
        extra_body={"temperature": 0},
        tools=[WEATHER],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "Weather in Rome?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses
    assert uses[0].name == "get_weather"
    assert isinstance(uses[0].input, dict)
    assert "city" in uses[0].input


def test_count_tokens_is_the_rendered_prompt(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "Hello there"}]
    counted = claude.messages.count_tokens(model=MODEL, messages=messages)
    message = claude.messages.create(
        model=MODEL,
        max_tokens=1,
        messages=messages,
    )
    usage = message.usage
    read = usage.cache_read_input_tokens or 0
    assert counted.input_tokens == usage.input_tokens + read
    with_tools = claude.messages.count_tokens(
        model=MODEL,
        messages=messages,
        tools=[WEATHER],
    )
    assert with_tools.input_tokens > counted.input_tokens


def test_errors_are_the_sdk_error_types(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert body_of(missing.value)["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "hi"}]
        )
    assert body_of(bad.value)["type"] == "error"
    assert body_of(bad.value)["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                        }
                    ],
                }
            ],
        )
