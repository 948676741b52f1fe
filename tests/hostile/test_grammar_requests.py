"""Grammars from a client's schema can neither kill the process nor stall it.

Each test sends the request that used to abort or segfault llama.cpp (or hang the engine),
then checks the server is alive, healthy, serving, and holds nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.sse import sse_chunks
from tests.hostile.conftest import CHAT, ServerProcess, banning

QUESTION = [{"role": "user", "content": "Give me a JSON value."}]


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def refused_dead_end(response: Any) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "no_allowed_token" and error["param"] == "logit_bias"


def dead_end_both_ways(server: ServerProcess, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A 400 for the whole answer; for the stream, an error event last. Its chunks."""
    with server.client() as http:
        refused_dead_end(http.post(CHAT, json=body))
        streamed = http.post(CHAT, json={**body, "stream": True})
    assert streamed.status_code == 200
    chunks = sse_chunks(streamed)
    assert chunks[-1]["error"]["code"] == "no_allowed_token"
    return chunks


def test_a_bias_that_bans_every_token_a_const_allows_is_a_400(
    server: ServerProcess, smollm2_pieces: list[bytes]
) -> None:
    body = {
        "model": "smollm2",
        "messages": QUESTION,
        "max_tokens": 10,
        "response_format": schema_format({"const": "Q"}),
        "logit_bias": banning(smollm2_pieces, b'"'),
    }
    with server.client() as http:
        refused_dead_end(http.post(CHAT, json=body))
    server.assert_recovered()


def test_json_object_with_every_opening_brace_banned_is_a_400_or_an_error_event(
    server: ServerProcess, smollm2_pieces: list[bytes]
) -> None:
    body = {
        "model": "smollm2",
        "messages": QUESTION,
        "max_tokens": 10,
        "response_format": {"type": "json_object"},
        "logit_bias": banning(smollm2_pieces, b"{"),
    }
    dead_end_both_ways(server, body)
    server.assert_recovered()


def test_a_forced_tool_call_that_runs_into_a_ban_mid_way_ends_with_an_error_event(
    server: ServerProcess, smollm2_pieces: list[bytes]
) -> None:
    # The call's head writes freely; its one argument must be the string "Z", and every token
    # that starts with Z is banned (none starts with a quote and a Z).
    tool = {
        "type": "function",
        "function": {
            "name": "pick",
            "parameters": {
                "type": "object",
                "properties": {"letter": {"const": "Z"}},
                "required": ["letter"],
            },
        },
    }
    body = {
        "model": "smollm2",
        "messages": QUESTION,
        "max_tokens": 60,
        "tools": [tool],
        "tool_choice": "required",
        "logit_bias": banning(smollm2_pieces, b"Z"),
    }
    assert len(dead_end_both_ways(server, body)) > 2  # the call had begun
    server.assert_recovered()


HUGE = 20_000


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "maxLength": HUGE}, "maxLength"),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": HUGE}, "maxItems"),
        ({"type": "array", "items": {"type": "integer"}, "minItems": HUGE}, "minItems"),
        ({"type": "string", "pattern": f"^a{{0,{HUGE}}}$"}, "pattern"),
        ({"type": "string", "pattern": "^((a{40}){40}){40}$"}, "pattern"),
        ({"enum": [f"value {i}" for i in range(2000)]}, "enum"),
        ({"anyOf": [{"const": i} for i in range(2000)]}, "anyOf"),
    ],
)
def test_schemas_beyond_the_bounds_are_refused_when_strict_and_relaxed_otherwise(
    server: ServerProcess, schema: dict[str, Any], named: str
) -> None:
    """``strict: true`` is a promise: a 400 naming the keyword. Without it the schema is a
    hint: the bound is relaxed (the value is simply unbounded) and the request answered, with
    a grammar still under the size and nesting limits."""
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 5}
    strict_format = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    function: dict[str, Any] = {"name": "f", "parameters": schema}
    tool = {"type": "function", "function": function}
    strict_tool = {"type": "function", "function": {**function, "strict": True}}
    wrapped = {"type": "object", "properties": {"v": schema}}
    wrapped_tool = {"type": "function", "function": {"name": "f", "parameters": wrapped}}
    with server.client() as http:
        refused_format = http.post(CHAT, json={**body, "response_format": strict_format})
        refused_tool = http.post(
            CHAT, json={**body, "tools": [strict_tool], "tool_choice": "required"}
        )
        relaxed = [
            http.post(CHAT, json={**body, "response_format": schema_format(schema)}),
            http.post(CHAT, json={**body, "tools": [tool], "tool_choice": "required"}),
            http.post(CHAT, json={**body, "tools": [wrapped_tool]}),
        ]
    assert refused_format.status_code == 400, refused_format.text
    assert named in refused_format.json()["error"]["message"]
    assert refused_format.json()["error"]["param"] == "response_format.json_schema"
    assert refused_tool.status_code == 400, refused_tool.text
    assert named in refused_tool.json()["error"]["message"]
    assert refused_tool.json()["error"]["param"] == "tools"
    as_format, *as_tools = relaxed
    assert as_format.status_code == 200, as_format.text
    assert as_format.json()["choices"][0]["finish_reason"] in ("stop", "length")
    for response in as_tools:
        if response.status_code == 400:
            # A 2,000-value enum written into the prompt does not fit this server's 1,024
            # tokens: refused for its length, after its grammar was planned (the schema passed).
            assert response.json()["error"]["code"] == "context_length_exceeded", response.text
            assert named in ("enum", "anyOf")
            continue
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    server.assert_recovered()


def test_a_schema_nested_600_deep_is_a_400_not_a_500(server: ServerProcess) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(600):
        schema = {"type": "array", "items": schema}
    # Deeper than pydantic's JSON parser nests by default: sent as raw text.
    body = json.dumps(
        {
            "model": "smollm2",
            "messages": QUESTION,
            "max_tokens": 5,
            "response_format": schema_format(schema),
        }
    )
    with server.client() as http:
        response = http.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "nested" in response.json()["error"]["message"]
    server.assert_recovered()


def test_a_grammar_llama_cpp_would_refuse_is_a_400_logged_in_one_line(
    server: ServerProcess,
) -> None:
    # The converter copies a pattern's \u escape into the grammar as it is, and llama.cpp
    # refuses one of fewer than 4 hex digits (printing the whole grammar to stderr). (Its
    # other such hole, a property name holding a quote, is closed: grammars now write
    # every literal themselves, and such a name is served.)
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string", "pattern": "^\\u00$"}},
    }
    before = len(server.log().splitlines())
    with server.client() as http:
        response = http.post(
            CHAT,
            json={
                "model": "smollm2",
                "messages": QUESTION,
                "response_format": schema_format(schema),
            },
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "response_format.json_schema"
    new_lines = server.log().splitlines()[before:]
    assert not any("::=" in line for line in new_lines), new_lines
    assert sum("grammar" in line for line in new_lines) <= 1, new_lines
    server.assert_recovered()
