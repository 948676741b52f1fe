"""Requests shaped like the ones Claude Code sends (captured from a real run, shortened to fit a
1,024-token context): billing header, system blocks with cache_control, a system message last,
adaptive thinking, context_management, metadata.user_id as a JSON string, 2020-12 schemas with
defer_loading, tool results with is_error, max_tokens 32000, and Accept: application/json on a
streamed request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import LiveServer, make_settings

MODEL = "smollm2"
HEADERS = {
    "accept": "application/json",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
    "context-management-2025-06-27,fine-grained-tool-streaming-2025-05-14",
    "x-api-key": "unused",
    "user-agent": "claude-cli/2.1.0 (external, cli)",
}
SCHEMA = "https://json-schema.org/draft/2020-12/schema"
TOOLS: list[dict[str, Any]] = [
    {
        "name": "Bash",
        "description": "Executes a bash command.",
        "input_schema": {
            "$schema": SCHEMA,
            "type": "object",
            "properties": {
                "command": {"type": "string", "description": "The command to execute"},
                "timeout": {"type": "number", "description": "Optional timeout in ms"},
                "run_in_background": {"type": "boolean"},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    },
    {
        "name": "TodoWrite",
        "description": "Update the todo list.",
        "input_schema": {
            "$schema": SCHEMA,
            "type": "object",
            "properties": {
                "todos": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "content": {"type": "string", "minLength": 1},
                            "status": {
                                "type": "string",
                                "enum": ["pending", "in_progress", "completed"],
                            },
                        },
                        "required": ["content", "status"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["todos"],
            "additionalProperties": False,
        },
    },
    {
        "name": "mcp__docs__search",
        "description": "Search the docs.",
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
        "defer_loading": True,
    },
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
]
SYSTEM_PROMPT = "You are Claude Code, a coding assistant. Answer briefly."


def system(billing: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "text",
            "text": f"x-anthropic-billing-header: cc_version=2.1.0.{billing}; cc_entrypoint=cli;",
        },
        {"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}},
    ]


def request(billing: str, messages: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": stream,
        "temperature": 0,
        "system": system(billing),
        "messages": [
            *messages,
            {"role": "system", "content": "<env>Working directory: /work</env>"},
        ],
        "tools": TOOLS,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "medium"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": json.dumps({"device_id": "abc", "session_id": "s1"})},
    }


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events = []
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def streamed(base_url: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with httpx.stream(
        "POST", base_url + "/v1/messages?beta=true", json=body, headers=HEADERS, timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response)


def usage_of(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    (delta,) = [payload for name, payload in events if name == "message_delta"]
    usage: dict[str, Any] = delta["usage"]
    return usage


def test_a_claude_code_request_streams_every_event_it_needs(live_server: LiveServer) -> None:
    events = streamed(
        live_server.base_url,
        request("a1b", [{"role": "user", "content": "What does ls do?"}], stream=True),
    )
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    for needed in ("content_block_start", "content_block_delta", "content_block_stop"):
        assert needed in names
    assert names[-2:] == ["message_delta", "message_stop"]
    (delta,) = [p for n, p in events if n == "message_delta"]
    assert delta["delta"]["stop_reason"] in ("end_turn", "tool_use", "max_tokens")
    # Block indexes open and close in order.
    starts = [p["index"] for n, p in events if n == "content_block_start"]
    stops = [p["index"] for n, p in events if n == "content_block_stop"]
    assert starts == stops == list(range(len(starts)))


def test_a_tool_result_with_is_error_is_accepted(live_server: LiveServer) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "List the files."}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should run ls.", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": "ls: cannot open directory",
                    "is_error": True,
                    "cache_control": {"type": "ephemeral"},
                },
                {"type": "text", "text": "Why did that fail?"},
            ],
        },
    ]
    events = streamed(live_server.base_url, request("c3d", messages, stream=True))
    assert events[-1][0] == "message_stop"
    assert usage_of(events)["output_tokens"] > 0


def second_turn_cached(base_url: str | None, client: TestClient | None) -> int:
    """The cache_read_input_tokens of a conversation's second turn, whose billing line differs
    from the first's (as Claude Code's does)."""
    first: list[dict[str, Any]] = [{"role": "user", "content": "Say hi."}]
    body = request("f00", first, stream=False)
    answer = _post(base_url, client, body)
    text = "".join(b.get("text", "") for b in answer["content"])
    second: list[dict[str, Any]] = [
        *first,
        {"role": "assistant", "content": [{"type": "text", "text": text}]},
        {"role": "user", "content": "And now say bye."},
    ]
    again = _post(base_url, client, request("ba7", second, stream=False))
    cached: int = again["usage"]["cache_read_input_tokens"]
    return cached


def _post(base_url: str | None, client: TestClient | None, body: dict[str, Any]) -> Any:
    if client is not None:
        answer = client.post("/v1/messages?beta=true", json=body, headers=HEADERS)
        assert answer.status_code == 200, answer.text
        return answer.json()
    assert base_url is not None
    response = httpx.post(
        base_url + "/v1/messages?beta=true", json=body, headers=HEADERS, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def keeping_client() -> Iterator[TestClient]:
    settings = make_settings(keep_billing_header=True)  # else as the live server
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_billing_header_is_stripped_so_the_prefix_is_reused(
    live_server: LiveServer, keeping_client: TestClient
) -> None:
    stripped = second_turn_cached(live_server.base_url, None)
    kept = second_turn_cached(None, keeping_client)
    # Kept, the changed billing line near the start leaves only the tokens before its change.
    assert kept < 40
    # Stripped: the system prompt, the tools and the first turn come from the cache.
    assert stripped > kept + 100
