"""Every bad input gets the stated status and an OpenAI error object; never a 422 or a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import make_settings

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def assert_error(
    response: Any, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        CHAT,
        content=b'{"model": "smollm2", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert "JSON" in assert_error(response, 400)["message"]


def test_empty_body_is_400(client: TestClient) -> None:
    response = client.post(CHAT, content=b"", headers={"content-type": "application/json"})
    assert "missing" in assert_error(response, 400)["message"]


def test_lone_surrogates_in_text_are_replaced_not_a_500(client: TestClient) -> None:
    body = b'{"model": "smollm2", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    response = client.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_body_that_is_not_an_object_is_400(client: TestClient, body: bytes) -> None:
    assert_error(client.post(CHAT, content=body, headers={"content-type": "application/json"}), 400)


BAD_CHAT_FIELDS = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2**40}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"repeat_penalty": 0}, "repeat_penalty"),
    ({"n": 0}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"seed": 2**63}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"),
    ({"stream": "yes please"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages.0.role"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
    ({"model": 7}, "model"),
]


@pytest.mark.parametrize("fields, param", BAD_CHAT_FIELDS)
def test_invalid_chat_fields_are_400_naming_the_field(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "smollm2", "messages": MESSAGES, **fields}
    assert_error(client.post(CHAT, json=body), 400, param=param)


def test_missing_messages_is_400(client: TestClient) -> None:
    assert_error(client.post(CHAT, json={"model": "smollm2"}), 400, param="messages")


def test_missing_model_is_400(client: TestClient) -> None:
    assert_error(client.post(CHAT, json={"messages": MESSAGES}), 400, param="model")


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"temperature": 3}, "temperature"),
        ({"n": 0}, "n"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": {"text": "x"}}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["1", "2", "3", "4", "5"]}, "stop"),
        ({"stream_options": {"include_usage": True}, "stream": False}, "stream_options"),
    ],
)
def test_invalid_completion_fields_are_400(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "smollm2", "prompt": "hi", **fields}
    assert_error(client.post(COMPLETIONS, json=body), 400, param=param)


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_the_context_is_400_before_any_stream(
    client: TestClient, stream: bool
) -> None:
    long_text = "word " * 1500
    response = client.post(
        CHAT,
        json={
            "model": "smollm2",
            "messages": [{"role": "user", "content": long_text}],
            "stream": stream,
        },
    )
    assert_error(response, 400, code="context_length_exceeded", param="messages")
    response = client.post(
        COMPLETIONS, json={"model": "smollm2", "prompt": long_text, "stream": stream}
    )
    assert_error(response, 400, code="context_length_exceeded", param="prompt")


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_context_is_each_familys_own_error(
    client: TestClient, stream: bool
) -> None:
    """The words agents look for: Responses names ``input``; Anthropic's "prompt is too
    long: N tokens > M maximum" (Claude Code shows it as such); Ollama's "the input length
    exceeds the context length"."""
    long_text = "word " * 1500
    turn = [{"role": "user", "content": long_text}]
    response = client.post(
        "/v1/responses", json={"model": "smollm2", "input": long_text, "stream": stream}
    )
    assert_error(response, 400, code="context_length_exceeded", param="input")
    response = client.post(
        "/v1/messages",
        json={"model": "smollm2", "max_tokens": 64, "messages": turn, "stream": stream},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    message = body["error"]["message"]
    assert message.startswith("prompt is too long: ") and message.endswith(" > 1024 maximum")
    tokens = int(message.split(": ")[1].split(" ")[0])
    assert tokens > 1024
    for path, body in [
        ("/api/chat", {"model": "smollm2", "messages": turn, "stream": stream}),
        ("/api/generate", {"model": "smollm2", "prompt": long_text, "stream": stream}),
    ]:
        response = client.post(path, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith("the input length exceeds the context length")


def test_max_tokens_beyond_the_context_is_400(client: TestClient) -> None:
    response = client.post(
        CHAT, json={"model": "smollm2", "messages": MESSAGES, "max_tokens": 5000}
    )
    assert_error(response, 400, code="context_length_exceeded", param="max_tokens")


@pytest.mark.parametrize("url", [CHAT, COMPLETIONS])
def test_unknown_model_is_404_and_never_served_by_another(client: TestClient, url: str) -> None:
    response = client.post(url, json={"model": "gpt-4o", "messages": MESSAGES, "prompt": "x"})
    assert_error(response, 404, code="model_not_found", param="model")


def test_image_parts_are_refused_clearly(client: TestClient) -> None:
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    body = {"model": "smollm2", "messages": [image]}
    assert_error(client.post(CHAT, json=body), 400, code="unsupported_feature", param="messages")


def test_echo_with_logprobs_is_refused_clearly(client: TestClient) -> None:
    body = {"model": "smollm2", "prompt": "Hi", "echo": True, "logprobs": 1}
    assert_error(
        client.post(COMPLETIONS, json=body), 400, code="unsupported_feature", param="logprobs"
    )


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, None),
        ({"logit_bias": {"50000000": 1}}, "logit_bias"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"12": 101}}, "logit_bias.12"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
    ],
)
def test_bad_structured_fields_are_400(
    client: TestClient, fields: dict[str, Any], param: str | None
) -> None:
    body = {"model": "smollm2", "messages": MESSAGES, "max_tokens": 4, **fields}
    assert_error(client.post(CHAT, json=body), 400, param=param)


def test_completion_logprobs_above_five_are_400(client: TestClient) -> None:
    body = {"model": "smollm2", "prompt": "Hi", "logprobs": 6}
    assert_error(client.post(COMPLETIONS, json=body), 400, param="logprobs")


def test_unknown_route_and_wrong_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.get(CHAT), 405)


@pytest.fixture(scope="module")
def small_body_client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(max_body_bytes=4096))) as test_client:
        yield test_client


def test_body_over_the_limit_is_413(small_body_client: TestClient) -> None:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_error(small_body_client.post(CHAT, json=body), 413, code="payload_too_large")


def test_chunked_body_over_the_limit_is_413(small_body_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "smollm2", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    response = small_body_client.post(
        CHAT, content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, code="payload_too_large")


def test_default_body_limit_is_8_mib(client: TestClient) -> None:
    body = b'{"model": "smollm2", "prompt": "' + b"x" * (8 * 1024 * 1024) + b'"}'
    assert_error(
        client.post(COMPLETIONS, content=body, headers={"content-type": "application/json"}), 413
    )


def test_server_still_serves_after_all_of_that(client: TestClient) -> None:
    response = client.post(CHAT, json={"model": "smollm2", "messages": MESSAGES, "max_tokens": 3})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user"}], "messages.0.content"),
        ([{"role": "user", "content": None}], "messages.0.content"),
        (
            [{"role": "system", "content": None}, {"role": "user", "content": "hi"}],
            "messages.0.content",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "1", "type": "function", "function": "get_weather"}],
                },
            ],
            "messages.1.tool_calls.0.function",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "1", "type": "function", "function": None}],
                },
            ],
            "messages.1.tool_calls.0.function",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "1", "function": {"arguments": "{}"}}]},
            ],
            "messages.1.tool_calls.0.function.name",
        ),
    ],
)
def test_malformed_messages_are_400s_naming_the_field(
    client: TestClient, messages: list[Any], param: str
) -> None:
    response = client.post(CHAT, json={"model": "smollm2", "messages": messages})
    assert_error(response, 400, param=param)
