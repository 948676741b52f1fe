"""Structured output, tools, logprobs and embeddings through the official `openai` client."""

from __future__ import annotations

import base64
import json
import math
from typing import cast

import openai
import pytest
from openai.types.chat import ChatCompletionToolParam
from pydantic import BaseModel, Field

from tests.api.test_structured import WEATHER_TOOL as WEATHER
from tests.conftest import WIDE_MARGIN, chat_picks

WEATHER_TOOL = cast(ChatCompletionToolParam, WEATHER)


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population: int


def test_parse_returns_the_pydantic_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="smollm2",
        messages=[{"role": "user", "content": "Give me the capital of France as JSON."}],
        response_format=City,
        temperature=0,
        max_tokens=120,
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, City)
    assert message.parsed.name


def test_streamed_tool_call_accumulates_in_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the weather in Rome?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
        stream=True,
    )
    name, arguments, call_id, finish = "", "", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            assert call.index == 0
            call_id = call.id or call_id
            if call.function is not None:
                name += call.function.name or ""
                arguments += call.function.arguments or ""
        finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert call_id.startswith("call_") and name == "get_weather"
    assert json.loads(arguments) == {"city": "Rome"}  # a wide pick: see the next test


def test_tool_calls_in_a_whole_response(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the weather in Rome?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=80,
        logprobs=True,
        top_logprobs=2,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    # The city is the model's pick, by a margin no CPU's rounding flips (2.5 or more on those
    # measured; logprobs are the model's before the grammar, whose limits only widen it).
    (rome,) = [p for p in chat_picks(choice.model_dump()) if p.token == "Rome"]
    assert rome.margin >= WIDE_MARGIN
    assert json.loads(call.function.arguments) == {"city": "Rome"}


def test_logprobs_join_to_the_content(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say something nice."}],
        logprobs=True,
        top_logprobs=2,
        max_tokens=30,
        temperature=0.7,
        seed=2,
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in choice.logprobs.content)


def test_embeddings_as_floats_and_as_base64(client: openai.OpenAI) -> None:
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    default = client.embeddings.create(model="smollm2", input=["hello", "world"])
    floats = client.embeddings.create(
        model="smollm2", input=["hello", "world"], encoding_format="float"
    )
    assert [d.index for d in default.data] == [0, 1]
    for a, b in zip(default.data, floats.data, strict=True):
        assert len(a.embedding) == len(b.embedding) == 576
        assert all(
            math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7)
            for x, y in zip(a.embedding, b.embedding, strict=True)
        )
    assert default.usage.prompt_tokens > 0


def test_raw_base64_decodes_to_float32(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="smollm2", input="hello", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str) and len(base64.b64decode(encoded)) == 576 * 4


def test_bad_embedding_input_is_a_400_from_the_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="smollm2", input="")
    assert raised.value.status_code == 400
