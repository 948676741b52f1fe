"""The Responses API with the real `openai` SDK against a live server on SmolLM2: whole and
streamed responses (every event parsed with the SDK's own types), stored responses,
structured output, and a two-turn function-call loop through previous_response_id."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import FunctionToolParam, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import LiveServer

EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_a_response_is_created_stored_listed_and_deleted(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="smollm2",
        instructions="Answer in one word.",
        input="What colour is the sky?",
        max_output_tokens=16,
        temperature=0,
    )
    assert response.id.startswith("resp_") and len(response.id) > 40
    assert response.object == "response" and response.model == "smollm2"
    assert response.status in ("completed", "incomplete")
    assert response.output_text  # the SDK joins the output_text parts
    assert response.usage is not None and response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0
    assert response.instructions == "Answer in one word."
    again = client.responses.retrieve(response.id)
    assert again.output_text == response.output_text and again.id == response.id
    items = client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    # Greedy, and a prompt a three-token answer cannot finish (a sampled count from one to
    # fifty stopped after two tokens on an AVX2 build).
    response = client.responses.create(
        model="smollm2",
        input="Write a long story about a dragon who learns to cook.",
        max_output_tokens=3,
        temperature=0,
        store=False,
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3
    with pytest.raises(openai.NotFoundError):  # store: false keeps nothing
        client.responses.retrieve(response.id)


def _stream_events(live_server: LiveServer, body: dict[str, Any]) -> list[Any]:
    events = []
    with (
        httpx.Client(base_url=live_server.base_url, timeout=60) as http,
        http.stream("POST", "/v1/responses", json={**body, "stream": True}) as answer,
    ):
        assert answer.status_code == 200
        name = None
        for line in answer.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                assert data["type"] == name  # the event line names the event
                events.append(EVENT.validate_python(data))  # the SDK's own types, strictly
    return events


def test_a_streamed_response_has_every_event_in_order(
    client: openai.OpenAI, live_server: LiveServer
) -> None:
    body = {
        "model": "smollm2",
        "input": "Say hello to the team.",
        "max_output_tokens": 12,
        "temperature": 0,
    }
    # The stream and the whole answer below both read the prompt from the cache alike: this
    # request only puts it there (a prompt read whole may round differently on some CPUs).
    client.responses.create(**{**body, "max_output_tokens": 1, "store": False})  # type: ignore[call-overload]
    events = _stream_events(live_server, body)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    final = events[-1].response
    assert deltas == done.text == final.output_text and deltas
    item_ids = {e.item_id for e in events if e.type == "response.output_text.delta"}
    assert item_ids == {final.output[0].id}
    # The stream's response is the stored one, and equals a whole answer's text.
    assert client.responses.retrieve(final.id).output_text == deltas
    whole = client.responses.create(**body)  # type: ignore[call-overload]
    assert whole.output_text == deltas


def test_the_sdk_streams_with_its_own_helper(client: openai.OpenAI) -> None:
    # A schema the answer completes quickly, so that the stream ends with response.completed.
    fruit: dict[str, object] = {
        "type": "object",
        "properties": {"fruit": {"enum": ["apple", "pear"]}},
    }
    with client.responses.stream(
        model="smollm2",
        input="Name a fruit.",
        text={"format": {"type": "json_schema", "name": "fruit", "schema": fruit}},
        max_output_tokens=40,
        temperature=0,
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text


def test_structured_output_through_text_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model="smollm2",
        input="Invent a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema}},
        max_output_tokens=60,
        temperature=0,
    )
    value = json.loads(response.output_text)
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)


def test_a_function_call_loop_continues_the_stored_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="smollm2",
        input="What is the weather in Paris?",
        tools=[WEATHER, {"type": "web_search"}],  # hosted tools are left out
        tool_choice="required",
        max_output_tokens=60,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert "city" in json.loads(calls[0].arguments)
    assert calls[0].call_id.startswith("call_")
    second = client.responses.create(
        model="smollm2",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny"}],
        tools=[WEATHER],
        max_output_tokens=30,
        temperature=0,
    )
    assert second.status in ("completed", "incomplete") and second.output_text
    assert second.previous_response_id == first.id
    assert second.usage is not None
    # The earlier turns were replayed, and their KV was still in a slot.
    assert second.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_an_unknown_previous_response_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="smollm2", input="Hi", previous_response_id="resp_nope")
    assert info.value.code == "previous_response_not_found"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"background": True}, "background"),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "image_url": "http://x/y.png"}],
                    }
                ]
            },
            "input[0].content[0]",
        ),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name"),
    ],
)
def test_what_hearth_cannot_honour_is_a_400_naming_the_field(
    client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": "smollm2", "input": "Hi", **fields}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(**body)
    assert info.value.param == param
