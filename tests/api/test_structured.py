"""Structured output, tool calls, logprobs, logit_bias and shared-prompt choices, on the real
SmolLM2 model."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from tests.api.test_chat import chat, chat_stream, stream_text

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Rome?"}]
# "<tool_call>" is the tokens "<", "tool", "_", "call", ">" in SmolLM2's vocabulary.
TOOL_TAG_TOKENS = {"44": 100, "19324": 100, "79": 100, "4350": 100, "46": 100}


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population: int


def test_json_schema_output_matches_the_schema(client: TestClient) -> None:
    data = chat(
        client,
        messages=[{"role": "user", "content": "Give me the capital of France as JSON."}],
        max_tokens=120,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "City", "schema": City.model_json_schema(), "strict": True},
        },
    )
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    City.model_validate_json(choice["message"]["content"])


def test_json_object_output_is_a_json_object_even_when_sampled(client: TestClient) -> None:
    data = chat(
        client,
        messages=[{"role": "user", "content": "Describe a tree as JSON with two short fields."}],
        max_tokens=200,
        temperature=1.0,
        seed=3,
        response_format={"type": "json_object"},
    )
    content = data["choices"][0]["message"]["content"]
    if data["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # cut by max_tokens: still the start of an object
        assert content.lstrip().startswith("{")


def test_an_unenforceable_strict_schema_is_400_naming_the_keyword(client: TestClient) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "smollm2",
            "messages": WEATHER_QUESTION,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": schema, "strict": True},
            },
        },
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert "minimum" in error["message"] and error["param"] == "response_format.json_schema"


def test_a_non_strict_schema_is_relaxed_and_what_stays_is_enforced(client: TestClient) -> None:
    """Without ``strict`` the bound is a hint: dropped, while the object, its key and the
    integer type are still enforced."""
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["n"],
        "additionalProperties": False,
    }
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Pick a number from 1 to 5."}],
            "max_tokens": 40,
            "seed": 1,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": schema},
            },
        },
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    if choice["finish_reason"] == "stop":
        value = json.loads(choice["message"]["content"])
        assert set(value) == {"n"} and isinstance(value["n"], int)
    else:  # cut by max_tokens: still the object's start
        assert choice["message"]["content"].lstrip().startswith("{")


def _assert_weather_call(call: dict[str, Any]) -> dict[str, Any]:
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    arguments: dict[str, Any] = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    assert len(arguments["city"]) <= 40
    return arguments


def test_a_named_tool_choice_forces_a_valid_call(client: TestClient) -> None:
    data = chat(
        client,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=80,
    )
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert _assert_weather_call(call) == {"city": "Rome"}


class Stop(BaseModel):
    city: str = Field(max_length=30)
    nights: int


class Trip(BaseModel):
    traveller: str = Field(max_length=30)
    stops: list[Stop] = Field(max_length=3)


def test_tool_parameters_with_their_own_defs_resolve_within_the_function(
    client: TestClient,
) -> None:
    # pydantic writes nested models as "$ref": "#/$defs/Stop", relative to the parameters,
    # not to the call Hearth wraps around them; this was a 400 ("points nowhere").
    trip_tool = {
        "type": "function",
        "function": {"name": "plan_trip", "parameters": Trip.model_json_schema()},
    }
    data = chat(
        client,
        messages=[{"role": "user", "content": "Plan a trip to Rome and Paris for Ann."}],
        tools=[WEATHER_TOOL, trip_tool],
        tool_choice={"type": "function", "function": {"name": "plan_trip"}},
        temperature=0,
        max_tokens=120,
    )
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "plan_trip"
    Trip.model_validate_json(call["function"]["arguments"])


def test_required_without_parallel_calls_gives_exactly_one_call(client: TestClient) -> None:
    data = chat(
        client,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0.8,
        seed=11,
        max_tokens=80,
    )
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert len(choice["message"]["tool_calls"]) == 1
    _assert_weather_call(choice["message"]["tool_calls"][0])


def test_auto_constrains_a_call_once_the_model_starts_one(client: TestClient) -> None:
    # The bias makes the model open a call; from "<tool_call>" on, the grammar holds it to the
    # schema, even though the bias keeps pushing "_" (the city stops at maxLength 40).
    data = chat(
        client,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        parallel_tool_calls=False,
        logit_bias=TOOL_TAG_TOKENS,
        temperature=0,
        max_tokens=100,
    )
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    _assert_weather_call(call)


def test_tool_none_and_no_tools_leave_the_text_alone(client: TestClient) -> None:
    data = chat(
        client, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=8
    )
    assert "tool_calls" not in data["choices"][0]["message"]
    assert data["choices"][0]["finish_reason"] in ("stop", "length")


def test_streamed_tool_calls_arrive_as_openai_deltas(client: TestClient) -> None:
    chunks = chat_stream(
        client,
        messages=WEATHER_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    deltas = [
        d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert deltas[0]["index"] == 0 and deltas[0]["id"].startswith("call_")
    assert deltas[0]["function"]["name"] == "get_weather"
    arguments = "".join(d["function"].get("arguments", "") for d in deltas)
    assert json.loads(arguments) == {"city": "Rome"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert stream_text(chunks) == ""


def test_a_conversation_with_tool_results_renders_and_answers(client: TestClient) -> None:
    history = [
        *WEATHER_QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"},
    ]
    data = chat(client, messages=history, tools=[WEATHER_TOOL], max_tokens=30, temperature=0)
    assert data["usage"]["prompt_tokens"] > 100  # the tools prompt and the call are in it
    assert data["choices"][0]["message"]["content"]


def _joined(entries: list[dict[str, Any]]) -> str:
    return "".join(e["token"] for e in entries)


def test_chat_logprobs_join_to_the_content(client: TestClient) -> None:
    data = chat(client, logprobs=True, top_logprobs=3, max_tokens=40, temperature=0.9, seed=5)
    choice = data["choices"][0]
    entries = choice["logprobs"]["content"]
    assert _joined(entries) == choice["message"]["content"]
    assert len(entries) == data["usage"]["completion_tokens"]
    for entry in entries:
        assert entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3
        assert all(t["logprob"] <= 0 for t in entry["top_logprobs"])
        assert [t["logprob"] for t in entry["top_logprobs"]] == sorted(
            (t["logprob"] for t in entry["top_logprobs"]), reverse=True
        )


def test_greedy_tokens_are_the_top_alternative(client: TestClient) -> None:
    data = chat(client, logprobs=True, top_logprobs=1, max_tokens=10, temperature=0)
    for entry in data["choices"][0]["logprobs"]["content"]:
        assert entry["logprob"] == entry["top_logprobs"][0]["logprob"]


def test_streamed_logprobs_join_to_the_streamed_content(client: TestClient) -> None:
    chunks = chat_stream(client, logprobs=True, max_tokens=40, temperature=0)
    entries = [
        e
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for e in c["choices"][0]["logprobs"]["content"]
    ]
    assert entries and _joined(entries) == stream_text(chunks)


def test_completion_logprobs_have_offsets_into_the_text(client: TestClient) -> None:
    response = client.post(
        "/v1/completions",
        json={
            "model": "smollm2",
            "prompt": "I like",
            "max_tokens": 12,
            "logprobs": 2,
            "temperature": 0,
        },
    )
    choice = response.json()["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    for token, offset in zip(logprobs["tokens"], logprobs["text_offset"], strict=True):
        assert choice["text"][offset : offset + len(token)] == token
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])


def test_logit_bias_bans_and_forces_tokens(client: TestClient) -> None:
    base = {
        "model": "smollm2",
        "prompt": "The capital of France is",
        "max_tokens": 4,
        "temperature": 0,
    }
    plain = client.post("/v1/completions", json=base).json()["choices"][0]["text"]
    first = client.post("/tokenize", json={"model": "smollm2", "text": plain, "add_special": False})
    first_token = first.json()["tokens"][0]
    banned = client.post("/v1/completions", json={**base, "logit_bias": {str(first_token): -100}})
    assert not banned.json()["choices"][0]["text"].startswith(plain[:2])
    banana = client.post(
        "/tokenize", json={"model": "smollm2", "text": " banana", "add_special": False}
    )
    (banana_token,) = banana.json()["tokens"]
    forced = client.post("/v1/completions", json={**base, "logit_bias": {str(banana_token): 100}})
    assert forced.json()["choices"][0]["text"] == " banana" * 4


def test_n_choices_read_the_prompt_once(client: TestClient, app: Any) -> None:
    scheduler = app.state.hearth.registry.loaded_handle("smollm2").engine
    copies = scheduler.stats().cache["copies"]
    long_question = [{"role": "user", "content": "Tell me about the sea. " * 12}]
    data = chat(client, messages=long_question, n=3, max_tokens=8, temperature=0.9, seed=1)
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert scheduler.stats().cache["copies"] - copies == 2
    # What was cached before the request, not what the choices copied from each other.
    assert (
        data["usage"]["prompt_tokens_details"]["cached_tokens"]
        < data["usage"]["prompt_tokens"] - 60
    )


def test_a_forced_call_cut_off_by_max_tokens_is_length_with_no_call_and_no_markup(
    client: TestClient,
) -> None:
    body: dict[str, Any] = {
        "messages": WEATHER_QUESTION,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 6,
    }
    whole = chat(client, **body)["choices"][0]
    assert whole["finish_reason"] == "length"
    assert "tool_calls" not in whole["message"]
    assert whole["message"]["content"] == ""
    chunks = chat_stream(client, **body)
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finals[-1] == "length"
    assert "<tool_call>" not in stream_text(chunks)


def test_enum_values_and_names_holding_quotes_and_backslashes_are_held_exactly(
    client: TestClient,
) -> None:
    """Review finding: llama-cpp-python's schema converter left backslashes in literals as
    they were, so an enum value or a property name holding a quote made a grammar llama.cpp
    refused (a 400), and one holding a backslash admitted text that is not JSON."""
    schema = {
        "type": "object",
        "properties": {'say "hi"': {"type": "string", "enum": ['a "quoted" word', "C:\\path"]}},
        "required": ['say "hi"'],
        "additionalProperties": False,
    }
    data = chat(
        client,
        messages=[{"role": "user", "content": "Pick one."}],
        max_tokens=40,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Pick", "schema": schema, "strict": True},
        },
    )
    value = json.loads(data["choices"][0]["message"]["content"])
    assert value['say "hi"'] in ('a "quoted" word', "C:\\path")
