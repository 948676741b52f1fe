"""A request shaped like Codex CLI's (captured from a real run): developer and user messages
of input_text parts with ids and status, hosted, custom, namespace and tool_search tools,
reasoning and include settings, no max_output_tokens, store false, streamed. Hearth must
answer with a complete event stream: every item done, then response.completed or
response.incomplete with the id."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.conftest import LiveServer

SHELL = {
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "array", "items": {"type": "string"}}},
        "required": ["command"],
        "additionalProperties": False,
    },
}
CODEX_BODY: dict[str, Any] = {
    "model": "smollm2",
    "instructions": "You are a coding agent.",
    "input": [
        {
            "type": "message",
            "id": "msg_dev",
            "status": "completed",
            "role": "developer",
            "content": [{"type": "input_text", "text": "Sandbox: read-only."}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Say hi in two words."}],
        },
    ],
    "tools": [
        SHELL,
        {"type": "namespace", "name": "mcp__files", "tools": [{**SHELL, "name": "read_file"}]},
        {"type": "web_search"},
        {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
        {"type": "tool_search"},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"summary": "auto"},
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "session-1",
    "client_metadata": {"originator": "codex_cli_rs"},
    "temperature": 0,
}


def test_a_codex_shaped_turn_streams_to_its_end(live_server: LiveServer) -> None:
    headers = {"session-id": "s1", "originator": "codex_cli_rs", "x-codex-turn": "1"}
    events = []
    with (
        httpx.Client(base_url=live_server.base_url, timeout=120) as http,
        http.stream("POST", "/v1/responses", json=CODEX_BODY, headers=headers) as answer,
    ):
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1]["response"]
    assert final["id"] == events[0]["response"]["id"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done and [item["id"] for item in done] == [item["id"] for item in final["output"]]
    assert {t["name"] for t in final["tools"]} == {"shell", "read_file"}  # hosted ones left out
