"""Ollama's /api/* on the real model, in-process: its error shape on every failure, hostile
values (nesting, templates, num_ctx), the load/unload requests, a failure mid-stream, and the
Go template subset."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.api.ollama.template import render
from server.app import create_app
from server.errors import InvalidRequestError, UnsupportedFeatureError
from server.protocol.common import parse_keep_alive
from tests.api.faults import engine_fails_after, nested
from tests.conftest import make_settings

MODEL = "smollm2"
CHAT: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hi."}],
    "stream": False,
    "options": {"num_predict": 4},
}


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
        ("/api/chat", {**CHAT, "format": nested(100, key="a")}, "nested"),
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
        ("/api/embed", {"model": MODEL, "input": []}, "empty"),
        ("/api/embed", {"model": MODEL, "input": ["a"] * 2049}, "2048"),
        ("/api/embeddings", {"model": MODEL, "prompt": ""}, "prompt"),
        ("/api/chat", {**CHAT, "keep_alive": "1" + " " * 50_000 + "x"}, "keep_alive"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "raw": True, "think": "zzz"}, "think"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "format": 7}, "format"),
        ("/api/pull", {"model": "not a model!"}, "not a model to pull"),
        ("/api/pull", {}, "model"),
        ("/api/create", {"model": "x"}, "files"),
        ("/api/create", {"model": "x", "files": {"x.gguf": "sha256:zz"}}, "digest"),
        ("/api/push", {"model": "x"}, "does not push"),
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
    # A model of the config file is not Hearth's to delete; an unknown one is a 404.
    assert "config file" in assert_ollama_error(
        client.request("DELETE", "/api/delete", json={"model": MODEL}), 400
    )
    assert_ollama_error(client.request("DELETE", "/api/delete", json={"model": "llama3"}), 404)


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
    with engine_fails_after(client, MODEL, 2):
        # Greedy: a sampled start could be a character split over both tokens (no line yet).
        body = {**CHAT, "stream": True, "options": {"num_predict": 20, "temperature": 0}}
        with client.stream("POST", "/api/chat", json=body) as response:
            assert response.status_code == 200
            lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[0]["done"] is False
    assert set(lines[-1]) == {"error"}
    assert client.post("/api/chat", json=CHAT).status_code == 200


def test_the_template_subset() -> None:
    def fill(template: str, system: str = "", prompt: str = "p") -> str:
        return render(template, system=system, prompt=prompt, max_chars=1000)

    template = "{{- if .System }}<s>{{ .System }}</s>\n{{ end }}{{ .Prompt }} =>{{ .Response }}tail"
    assert fill(template, "be brief", "2+2") == "<s>be brief</s>\n2+2 =>"
    assert fill(template, "", "2+2") == "2+2 =>"
    with_else = "{{ if .System }}S{{ else }}no system{{ end }}: {{ .Prompt }}"
    assert fill(with_else) == "no system: p"
    assert fill(with_else, "x") == "S: p"
    assert fill("A  {{- .Prompt -}}  B") == "ApB"
    for bad in (
        "{{ range .Messages }}{{ end }}",
        "{{ if .System }}open",
        "{{ .Tools }}",
        "{{ if zPrompt }}x{{ end }}",
        "{{ if .System }}a{{ else }}b{{ else }}c{{ end }}",
        "{{ .Prompt",
        "{{ if .Prompt }}" * 20 + "{{ end }}" * 20,
    ):
        with pytest.raises(UnsupportedFeatureError):
            fill(bad)


def test_a_hostile_template_is_refused_fast_and_cannot_multiply_the_prompt() -> None:
    started = time.monotonic()
    for template in ("{{" * 20_000, "{{" + " " * 30_000, "{{ .Prompt " * 5000):
        with pytest.raises(InvalidRequestError):  # unclosed, or too long: at once
            render(template, system="", prompt="p", max_chars=1 << 23)
    with pytest.raises(InvalidRequestError, match="longer than"):
        render("{{.Prompt}}" * 5000, system="", prompt="x" * 25_000, max_chars=1 << 23)
    # These took minutes (a backtracking pattern) and gigabytes (no bound on the output).
    assert time.monotonic() - started < 5


def test_keep_alive_takes_go_durations_and_huge_values_mean_forever(client: TestClient) -> None:
    for keep_alive in ("5m0s", "1h30m", 1e300):
        body: dict[str, Any] = {"model": MODEL, "messages": [], "keep_alive": keep_alive}
        assert client.post("/api/chat", json=body).status_code == 200, keep_alive
    # One request asking for a century used to make /api/ps a 500 for everyone.
    running = client.get("/api/ps")
    assert running.status_code == 200, running.text
    assert running.json()["models"][0]["expires_at"].startswith("9999")
    nan = client.post(
        "/api/chat",
        content=b'{"model": "smollm2", "messages": [], "keep_alive": NaN}',
    )
    assert_ollama_error(nan, 400)
    client.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": -1})


def test_any_content_type_is_read_as_json_and_the_root_answers(client: TestClient) -> None:
    form = client.post(
        "/api/chat",
        content=json.dumps(CHAT).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 200, form.text
    assert client.head("/").status_code == 200
    assert "running" in client.get("/").text


def test_special_tokens_in_a_template_are_markup(client: TestClient) -> None:
    body = {"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    raw = client.post(
        "/api/generate",
        json={
            **body,
            "raw": True,
            "prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        },
    ).json()
    templated = client.post(
        "/api/generate",
        json={
            **body,
            "template": "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n",
        },
    ).json()
    assert templated["prompt_eval_count"] == raw["prompt_eval_count"]


def test_unloading_a_model_that_is_not_loaded_does_not_load_it() -> None:
    models = [
        m.model_copy(update={"preload": False}) for m in make_settings().models if m.name == MODEL
    ]
    with TestClient(create_app(make_settings(models=models))) as fresh:
        registry = fresh.app.state.hearth.registry  # type: ignore[attr-defined]
        answer = fresh.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0})
        assert answer.json()["done_reason"] == "unload"
        assert not registry.is_loaded(MODEL)
        assert registry.lifecycle_counts()[MODEL].get("load", 0) == 0


def test_a_tool_call_cut_off_by_the_length_is_not_streamed(client: TestClient) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    body = {
        **CHAT,
        "tools": [tool],
        "tool_choice": "required",
        "options": {"num_predict": 22, "temperature": 0},  # inside the call's arguments
    }
    whole = client.post("/api/chat", json=body).json()
    assert whole["done_reason"] == "length"
    assert "tool_calls" not in whole["message"]
    with client.stream("POST", "/api/chat", json={**body, "stream": True}) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done_reason"] == "length"
    assert not [line for line in lines if line["message"].get("tool_calls")]


def test_a_long_keep_alive_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ValueError):
        parse_keep_alive("1" + " " * 50_000 + "x")  # took seconds: a backtracking pattern
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("raw", [False, True])
def test_generate_checks_its_model_out_once(raw: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether the prompt goes through the chat template is known from the model it leases
    (Gemma-3-270M, a base model, has none): one checkout per request, even for a model not yet
    loaded, none taken and given back only to look."""
    base = "gemma3-270m"
    settings = make_settings(models=[m for m in make_settings().models if m.name == base])
    with TestClient(create_app(settings), raise_server_exceptions=False) as fresh:
        registry = fresh.app.state.hearth.registry  # type: ignore[attr-defined]
        assert not registry.is_loaded(base)
        checkouts: list[str] = []
        checkout = registry.checkout

        async def counted(name: str, **kwargs: Any) -> Any:
            checkouts.append(name)
            return await checkout(name, **kwargs)

        monkeypatch.setattr(registry, "checkout", counted)
        body = {"model": base, "prompt": "The sky is", "raw": raw, "stream": False}
        answer = fresh.post("/api/generate", json={**body, "options": {"num_predict": 2}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["done"] is True
        assert checkouts == [base]
        assert registry.loaded_handle(base).active == 0  # and its lease given back
