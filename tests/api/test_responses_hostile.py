"""Hostile JSON in the places chat and the Responses API take free-form values: each is a 400
naming the field, never a 500 (these were RecursionError and TypeError tracebacks), and a
stored conversation too long to replay is refused, not loaded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.api.openai import responses
from server.app import create_app
from tests.api.faults import nested
from tests.conftest import make_settings

DEEP_ARGUMENTS = "[" * 50_000 + "]" * 50_000


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = make_settings(models=[m for m in make_settings().models if m.name == "smollm2"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


CHAT_HISTORY = [
    {"role": "user", "content": "hi"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": DEEP_ARGUMENTS}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "x"},
]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": CHAT_HISTORY}, "messages"),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "hi"}],
                "chat_template_kwargs": {"x": nested(900)},
            },
            "chat_template_kwargs",
        ),
        (
            "/v1/responses",
            {
                "input": [
                    {
                        "type": "function_call",
                        "name": "f",
                        "call_id": "c",
                        "arguments": DEEP_ARGUMENTS,
                    },
                    {"type": "function_call_output", "call_id": "c", "output": "x"},
                ]
            },
            "input",  # the Responses API's name for the conversation
        ),
        (
            "/v1/responses",
            {"input": "hi", "tools": [{"type": "namespace", "tools": 5}]},
            "tools[0].tools",
        ),
        ("/v1/responses", {"input": [{"role": "user", "content": nested(100)}]}, "input"),
        ("/v1/responses", {"input": "hi", "reasoning": {"effort": nested(200)}}, "reasoning"),
        (
            "/v1/responses",
            {"input": "hi", "tools": [{"type": "function", "name": "f", "description": {"a": 1}}]},
            "tools[0].description",
        ),
        (
            "/v1/responses",
            {"input": [{"role": "user", "content": "hi", "id": {"x": 1}}]},
            "input[0]",
        ),
    ],
)
def test_hostile_values_are_400s_naming_the_field(
    client: TestClient, path: str, body: dict[str, Any], param: str
) -> None:
    answer = client.post(path, json={"model": "smollm2", "max_tokens": 2, **body})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert client.get("/health").status_code == 200


def test_a_conversation_too_long_to_replay_is_refused(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responses, "HISTORY_LIMIT", 200)  # a few items are over it
    body = {"model": "smollm2", "input": "A long question " * 20, "max_output_tokens": 2}
    first = client.post("/v1/responses", json=body)
    assert first.status_code == 200, first.text
    follow = {**body, "input": "And?", "previous_response_id": first.json()["id"]}
    refused = client.post("/v1/responses", json=follow)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "previous_response_id"
    assert client.get(f"/v1/responses/{first.json()['id']}").status_code == 200  # still kept


def test_a_store_that_fails_under_the_server_still_answers() -> None:
    settings = make_settings(models=[m for m in make_settings().models if m.name == "smollm2"])
    with TestClient(create_app(settings), raise_server_exceptions=False) as fresh:
        store = fresh.app.state.hearth.responses  # type: ignore[attr-defined]
        store._db.execute("DROP TABLE responses")  # the file changed under the server
        body = {"model": "smollm2", "input": "Hi", "max_output_tokens": 2}
        answer = fresh.post("/v1/responses", json=body)
        assert answer.status_code == 200, answer.text
        with fresh.stream("POST", "/v1/responses", json={**body, "stream": True}) as streamed:
            kinds = [line for line in streamed.iter_lines() if line.startswith("event:")]
        assert kinds[-1] in ("event: response.completed", "event: response.incomplete")


def test_input_items_are_bounded_even_when_the_model_never_sees_them(
    client: TestClient,
) -> None:
    limit = client.app.state.hearth.settings.max_messages  # type: ignore[attr-defined]
    body = {"model": "smollm2", "input": [{}] * (limit + 1), "max_output_tokens": 2}
    answer = client.post("/v1/responses", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "too_many_messages"


def test_an_unexpected_failure_mid_stream_ends_with_response_failed(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = client.app.state.hearth.chat  # type: ignore[attr-defined]
    real = chat.events

    async def breaks(run: Any) -> Any:
        async for piece in real(run):
            yield piece
            raise RuntimeError("a bug after the first piece")

    monkeypatch.setattr(chat, "events", breaks)
    body = {"model": "smollm2", "input": "Hi", "max_output_tokens": 8, "stream": True}
    with client.stream("POST", "/v1/responses", json=body) as streamed:
        kinds = [line[7:] for line in streamed.iter_lines() if line.startswith("event: ")]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.failed"


def test_input_items_get_unique_ids_and_after_pages_through_each_once(
    client: TestClient,
) -> None:
    """A client's empty or repeated item ids are replaced by ids of the server's own (a
    usable id of the client's is kept), so ``after`` finds the one item it names."""
    contents = ["one", "two", "three", "four", "five"]
    ids: list[str | None] = ["", "msg_same", "msg_same", None, ""]
    items: list[dict[str, Any]] = []
    for content, item_id in zip(contents, ids, strict=True):
        item = {"type": "message", "role": "user", "content": content, "extra": content}
        items.append(item if item_id is None else {**item, "id": item_id})
    body = {"model": "smollm2", "input": items, "max_output_tokens": 2}
    answer = client.post("/v1/responses", json=body)
    assert answer.status_code == 200, answer.text
    listing = f"/v1/responses/{answer.json()['id']}/input_items"
    for order, expected in (("asc", contents), ("desc", contents[::-1])):
        seen: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 2, "order": order}
        while True:
            page = client.get(listing, params=params).json()
            seen += page["data"]
            if not page["has_more"]:
                break
            params["after"] = page["last_id"]
        assert [item["content"] for item in seen] == expected
        assert [item["extra"] for item in seen] == expected  # the client's fields, kept
        got = [item["id"] for item in seen]
        assert all(isinstance(i, str) and i.startswith("msg_") for i in got), got
        assert len(set(got)) == len(got), got
    assert "msg_same" in got
