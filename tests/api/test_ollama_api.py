"""Ollama's /api/* on the real model, in-process: its error shape on every failure, hostile
values (nesting, templates, num_ctx), the load/unload requests, a failure mid-stream, and the
Go template subset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.api.ollama.template import render
from server.app import create_app
from server.errors import UnsupportedFeatureError
from tests.conftest import make_settings

MODEL = "smollm2"
CHAT: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hi."}],
    "stream": False,
    "options": {"num_predict": 4},
}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = make_settings(models=[m for m in make_settings().models if m.name == MODEL])
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_ollama_error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str) and body["error"]
    message: str = body["error"]
    return message


@pytest.mark.parametrize(
    ("route", "body", "mentions"),
    [
        ("/api/chat", {**CHAT, "format": nested(100)}, "nested"),
        ("/api/chat", {**CHAT, "format": 5}, "format"),
        ("/api/chat", {**CHAT, "tools": [{"function": {"name": "a b"}}]}, "name"),
        ("/api/chat", {**CHAT, "tool_choice": {"function": {}}}, "tool_choice"),
        ("/api/chat", {**CHAT, "options": {"temperature": -1}}, "temperature"),
        ("/api/chat", {**CHAT, "options": {"stop": ["x"] * 17}}, "stop"),
        ("/api/chat", {**CHAT, "options": {"num_ctx": 8}}, "context"),
        ("/api/chat", {**CHAT, "think": "very"}, "think"),
        ("/api/chat", {**CHAT, "keep_alive": "forever"}, "keep_alive"),
        (
            "/api/chat",
            {**CHAT, "messages": [{"role": "user", "content": "x", "images": ["AAAA"]}]},
            "images",
        ),
        (
            "/api/chat",
            {
                **CHAT,
                "messages": [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"function": {"arguments": {}}}],
                    }
                ],
            },
            "tool_calls[0]",
        ),
        ("/api/generate", {"model": MODEL, "prompt": "x", "suffix": "y"}, "suffix"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "context": [1, 2]}, "context"),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "x", "template": "{{ .Messages }}"},
            "template",
        ),
        ("/api/show", {}, "model"),
        ("/api/embed", {"model": MODEL, "input": ["ok", ""]}, "empty"),
        ("/api/pull", {"model": "llama3"}, "hearth models pull"),
        ("/api/create", {"model": "x"}, "hearth models pull"),
    ],
)
def test_bad_requests_are_ollama_400s(
    client: TestClient, route: str, body: dict[str, Any], mentions: str
) -> None:
    assert mentions in assert_ollama_error(client.post(route, json=body), 400)


def test_unknown_models_and_routes_are_ollama_404s(client: TestClient) -> None:
    assert "llama3" in assert_ollama_error(
        client.post("/api/chat", json={**CHAT, "model": "llama3"}), 404
    )
    assert_ollama_error(client.post("/api/show", json={"model": "llama3"}), 404)
    assert_ollama_error(client.get("/api/nothing-here"), 404)
    assert_ollama_error(client.request("DELETE", "/api/delete", json={"model": MODEL}), 400)


def test_num_ctx_limits_the_answer_and_num_predict_minus_one_is_unlimited(
    client: TestClient,
) -> None:
    answer = client.post("/api/chat", json={**CHAT, "options": {"num_ctx": 40, "num_predict": -1}})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["prompt_eval_count"] + body["eval_count"] <= 40
    # Larger than the model's context: the model's context.
    bigger = client.post("/api/chat", json={**CHAT, "options": {"num_ctx": 1 << 20}})
    assert bigger.status_code == 200


def test_an_empty_request_loads_and_keep_alive_zero_unloads(client: TestClient) -> None:
    loaded = client.post("/api/generate", json={"model": MODEL})
    assert loaded.json()["done_reason"] == "load"
    unloading = client.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0})
    assert unloading.json()["done_reason"] == "unload"
    assert unloading.json()["message"] == {"role": "assistant", "content": ""}


def test_a_failure_mid_stream_is_a_last_error_line(client: TestClient) -> None:
    client.post("/api/generate", json={"model": MODEL, "keep_alive": -1})  # loaded again
    handle = client.app.state.hearth.registry.loaded_handle(MODEL)  # type: ignore[attr-defined]
    real = handle.backend.sample
    calls = 0

    def fails_later(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise ValueError("a bug in the loop")
        return real(*args)

    handle.backend.sample = fails_later
    try:
        body = {**CHAT, "stream": True, "options": {"num_predict": 20}}
        with client.stream("POST", "/api/chat", json=body) as response:
            assert response.status_code == 200
            lines = [json.loads(line) for line in response.iter_lines() if line]
    finally:
        handle.backend.sample = real
    assert lines[0]["done"] is False
    assert set(lines[-1]) == {"error"}
    assert client.post("/api/chat", json=CHAT).status_code == 200


def test_the_template_subset() -> None:
    template = "{{- if .System }}<s>{{ .System }}</s>\n{{ end }}{{ .Prompt }} =>{{ .Response }}tail"
    assert render(template, system="be brief", prompt="2+2") == "<s>be brief</s>\n2+2 =>"
    assert render(template, system="", prompt="2+2") == "2+2 =>"
    with_else = "{{ if .System }}S{{ else }}no system{{ end }}: {{ .Prompt }}"
    assert render(with_else, system="", prompt="p") == "no system: p"
    assert render(with_else, system="x", prompt="p") == "S: p"
    assert render("A  {{- .Prompt -}}  B", system="", prompt="p") == "ApB"
    for bad in ("{{ range .Messages }}{{ end }}", "{{ if .System }}open", "{{ .Tools }}"):
        with pytest.raises(UnsupportedFeatureError):
            render(bad, system="", prompt="p")
    with pytest.raises(UnsupportedFeatureError):
        render("{{ if .Prompt }}" * 20 + "{{ end }}" * 20, system="", prompt="p")
