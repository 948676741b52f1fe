"""/v1/messages on the real model, in-process: Anthropic's error shape on every failure (bad
fields, hostile nesting, keys, unknown routes under the family, a failure mid-stream), the
conversation mapping (system messages, tool results, thinking blocks), and bounds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.api.anthropic.convert import conversation
from server.app import create_app
from server.protocol.anthropic import CountTokensRequest
from server.services.spec import Turn
from tests.api.faults import engine_fails_after, nested
from tests.conftest import make_settings

MODEL = "smollm2"
HELLO: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 4,
    "messages": [{"role": "user", "content": "Say hi."}],
}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = make_settings(models=[m for m in make_settings().models if m.name == MODEL])
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_anthropic_error(response: Any, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    message: str = body["error"]["message"]
    assert message
    return message


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop_sequences": ["x"] * 17}, "stop_sequences"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "user message"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "user message"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": [1, 2]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": nested(200)}]}, "nested"),
        ({"system": [{"type": "text"}]}, "system[0]"),
        ({"tools": [{"name": "bad name!", "input_schema": {}}]}, "tools[0].name"),
        ({"tools": [{"name": "f", "input_schema": "no"}]}, "input_schema"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"metadata": {"user_id": "u" * 600}}, "user_id"),
        ({"output_config": {"format": {"type": "xml"}}}, "output_config.format"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": [1]}],
                    }
                ]
            },
            "input",
        ),
    ],
)
def test_bad_requests_are_anthropic_400s(
    client: TestClient, change: dict[str, Any], mentions: str
) -> None:
    body = {**HELLO, **change}
    body = {k: v for k, v in body.items() if v is not None}
    message = assert_anthropic_error(
        client.post("/v1/messages", json=body), 400, "invalid_request_error"
    )
    assert mentions in message


def test_an_unknown_model_is_a_404_not_found_error(client: TestClient) -> None:
    assert_anthropic_error(
        client.post("/v1/messages", json={**HELLO, "model": "claude-sonnet-4-5"}),
        404,
        "not_found_error",
    )
    assert_anthropic_error(
        client.post("/v1/messages/count_tokens", json={**HELLO, "model": "nope"}),
        404,
        "not_found_error",
    )


def test_invalid_json_and_a_wrong_method_are_anthropic_errors(client: TestClient) -> None:
    response = client.post(
        "/v1/messages", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_anthropic_error(response, 400, "invalid_request_error")
    assert client.get("/v1/messages").json()["type"] == "error"


def test_keys_are_read_from_x_api_key_and_refusals_are_authentication_errors() -> None:
    settings = make_settings(
        api_keys=["sk-team"], models=[m for m in make_settings().models if m.name == MODEL]
    )
    with TestClient(create_app(settings)) as client:
        refused = client.post("/v1/messages", json=HELLO, headers={"x-api-key": "wrong"})
        assert_anthropic_error(refused, 401, "authentication_error")
        assert client.post("/v1/messages", json=HELLO, headers={"x-api-key": "sk-team"}).is_success
        bearer = client.post(
            "/v1/messages", json=HELLO, headers={"authorization": "Bearer sk-team"}
        )
        assert bearer.is_success


def test_max_tokens_above_the_context_is_cut_to_what_it_leaves(client: TestClient) -> None:
    response = client.post("/v1/messages", json={**HELLO, "max_tokens": 32000})
    assert response.status_code == 200, response.text
    assert response.json()["stop_reason"] in ("end_turn", "max_tokens")


def test_a_failure_mid_stream_is_an_error_event(client: TestClient) -> None:
    with engine_fails_after(client, MODEL, 2):
        body = {**HELLO, "max_tokens": 20, "stream": True, "temperature": 0}
        with client.stream("POST", "/v1/messages", json=body) as response:
            assert response.status_code == 200
            lines = list(response.iter_lines())
    names = [line[7:] for line in lines if line.startswith("event: ")]
    assert names[0] == "message_start"
    assert names[-1] == "error"
    assert "message_stop" not in names
    error = json.loads([line for line in lines if line.startswith("data: ")][-1][6:])
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"
    # The model is alive again for the next request.
    assert client.post("/v1/messages", json=HELLO).status_code == 200


def convert(body: dict[str, Any], keep: bool = False) -> list[Turn]:
    return conversation(CountTokensRequest.model_validate(body), keep)


def test_system_blocks_are_joined_and_the_billing_line_stripped() -> None:
    turns = convert(
        {
            "model": MODEL,
            "system": [
                {"type": "text", "text": "x-anthropic-billing-header: cc_version=1.2.3.abc;"},
                {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
            ],
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    assert turns[0] == Turn("system", "Be brief.")
    kept = convert(
        {
            "model": MODEL,
            "system": "x-anthropic-billing-header: a;\nBe brief.",
            "messages": [{"role": "user", "content": "hi"}],
        },
        keep=True,
    )
    assert kept[0].content == "x-anthropic-billing-header: a;\nBe brief."


def test_a_trailing_system_message_joins_the_last_user_turn() -> None:
    turns = convert(
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": [{"type": "text", "text": "<env>cwd</env>"}]},
            ],
        }
    )
    assert turns == [Turn("user", "hi\n\n<env>cwd</env>")]


def test_tool_results_become_tool_turns_and_thinking_is_not_replayed() -> None:
    turns = convert(
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": "list files"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Running ls."},
                        {
                            "type": "tool_use",
                            "id": "t1",
                            "name": "Bash",
                            "input": {"command": "ls"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": "denied",
                            "is_error": True,
                        },
                        {"type": "text", "text": "why?"},
                    ],
                },
            ],
        }
    )
    assert [t.role for t in turns] == ["user", "assistant", "tool", "user"]
    assert turns[1].content == "Running ls."
    assert turns[1].tool_calls[0].name == "Bash"
    assert turns[1].tool_calls[0].arguments == {"command": "ls"}
    assert turns[2] == Turn("tool", "Error: denied", tool_call_id="t1")
    assert turns[3] == Turn("user", "why?")


def test_the_request_id_is_where_the_sdk_reads_it(client: TestClient) -> None:
    response = client.post("/v1/messages", json=HELLO)
    assert response.headers["request-id"] == response.headers["x-request-id"]


def test_tool_input_that_is_not_a_sendable_object_is_wrapped() -> None:
    from server.api.anthropic.convert import tool_input

    deep = "[" * 5000 + "]" * 5000
    assert tool_input(deep) == {"input": deep}  # was a RecursionError (a 500)
    assert tool_input('{"a": 1}') == {"a": 1}
    assert tool_input("[1]") == {"input": [1]}
