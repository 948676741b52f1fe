"""SmolLM2 served under real models' chat templates (llama.cpp's corpus, see
tests/services/test_template_corpus.py) answers a tool conversation over HTTP, and a template
that fails while rendering is a 400 chat_template_error, never a 500 or a reset connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import make_settings, model_file
from tests.services.test_template_corpus import MISSING, corpus, corpus_dir

# The templates the issue saw fail: a 500 or a reset (tojson's ensure_ascii), or a refusal
# (list.append in the sandbox).
SERVED = ["GLM-4.6", "GLM-4.7-Flash", "Kimi-K3", "GigaChat3-10B-A1.8B", "Kimi-K2-Instruct",
          "LFM2.5-8B-A1B"]  # fmt: skip
BROKEN = "{{ messages[0].content.no_such_method() }}{{ (1).__class__ }}"
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C."},
    {"role": "user", "content": "And tomorrow?"},
]

pytestmark = pytest.mark.skipif(not set(SERVED) <= set(corpus()), reason=MISSING)


def _entry(name: str, **template: str) -> dict[str, Any]:
    return {
        "name": name,
        "path": str(model_file("smollm2")),
        "n_ctx": 4096,  # GigaChat's system prompt alone is 1,200 tokens
        "slots": 1,
        "threads": 2,
        **template,
    }


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    models = [
        _entry(name, chat_template_file=str(corpus_dir() / f"{name}.jinja")) for name in SERVED
    ]
    models.append(_entry("broken", chat_template=BROKEN))
    with TestClient(create_app(make_settings(models=models))) as test_client:
        yield test_client


@pytest.mark.parametrize("name", SERVED)
def test_a_tool_conversation_is_answered_under_the_models_own_template(
    client: TestClient, name: str
) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={"model": name, "messages": CONVERSATION, "tools": [TOOL], "max_tokens": 4},
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 20


@pytest.mark.parametrize("stream", [False, True])
def test_a_template_that_fails_to_render_is_a_400_naming_the_error(
    client: TestClient, stream: bool
) -> None:
    body = {"model": "broken", "messages": CONVERSATION[:2], "max_tokens": 4, "stream": stream}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "chat_template_error" and "no_such_method" in error["message"]
    anthropic = client.post(
        "/v1/messages",
        json={"model": "broken", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert anthropic.status_code == 400 and anthropic.json()["type"] == "error"
    assert client.get("/health").status_code == 200
