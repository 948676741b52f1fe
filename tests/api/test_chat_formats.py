"""SmolLM2 served under real families' chat templates calls tools in each family's own text:
the call comes back as a tool call (never as content), in the family's id form, one per turn
where the template allows one, and the next turn, rendered by the same template, is answered.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.services.templates import ChatTemplate, message_to_template_dict
from tests.api.sse import sse_chunks
from tests.conftest import make_settings, model_file
from tests.services.test_formats import DECLARED, LEARNED
from tests.services.test_template_corpus import MISSING, corpus, corpus_dir

TEMPLATES = {
    "llama": "meta-llama-Llama-3.1-8B-Instruct",
    "nemo": "mistralai-Mistral-Nemo-Instruct-2407",
    "oss": "openai-gpt-oss-120b",
    "qwen": "Qwen-Qwen2.5-7B-Instruct",
    "coder": "Qwen3-Coder",  # arguments as <parameter=...> XML
    "glm": "GLM-4.6",  # arguments as <arg_key>/<arg_value> pairs
    "cohere": "Cohere2MoE",  # its prompt opens <|START_THINKING|>
}
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
        },
    },
}
# Parameters written as XML hold a string raw, up to the marker that ends it: SmolLM2 ends
# one with a marker of its own invention ("Paris</type>") and writes on, so for those
# templates the city is one of a list, which the grammar writes to its end.
XML_TOOL = {
    "type": "function",
    "function": {
        **TOOL["function"],
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}},
            "required": ["city"],
        },
    },
}
FORCED = {"type": "function", "function": {"name": "get_weather"}}


def tool(model: str) -> dict[str, Any]:
    return XML_TOOL if model in ("coder", "glm") else TOOL


QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]

pytestmark = pytest.mark.skipif(not set(TEMPLATES.values()) <= set(corpus()), reason=MISSING)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    models = [
        {
            "name": name,
            "path": str(model_file("smollm2")),
            "n_ctx": 2048,
            "slots": 1,
            "threads": 2,
            "chat_template_file": str(corpus_dir() / f"{template}.jinja"),
        }
        for name, template in TEMPLATES.items()
    ]
    with TestClient(create_app(make_settings(models=models))) as test_client:
        yield test_client


def chat(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/chat/completions", json={"temperature": 0, **body})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# (Cohere's history drops the thinking block its prompt opens: the prompt is not reused.)
@pytest.mark.parametrize("model", ["llama", "nemo", "oss", "qwen", "coder", "glm"])
def test_a_forced_call_comes_back_as_a_call_and_the_next_turn_is_answered(
    client: TestClient, model: str
) -> None:
    first = chat(
        client,
        {"model": model, "messages": QUESTION, "tools": [tool(model)], "tool_choice": FORCED,
         "max_tokens": 90},
    )  # fmt: skip
    message = first["choices"][0]["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    if model == "nemo":  # the id is the model's own, in the 9 characters Mistral's templates want
        assert len(call["id"]) == 9 and call["id"].isalnum()
    else:
        assert call["id"].startswith("call_")
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"},
    ]
    second = chat(
        client, {"model": model, "messages": history, "tools": [tool(model)], "max_tokens": 4}
    )
    # The first turn's prompt is read from the cache (all of it but a last token that the
    # next turn's text may tokenize differently).
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= first["usage"]["prompt_tokens"] - 1


def test_a_template_that_allows_one_call_per_turn_gets_one(client: TestClient) -> None:
    """Llama 3.1's template refuses two calls in a turn ("This model only supports single
    tool-calls at once!"): tool_choice required, parallel calls allowed, still makes one."""
    first = chat(
        client,
        {"model": "llama", "messages": QUESTION, "tools": [TOOL], "tool_choice": "required",
         "max_tokens": 60},
    )  # fmt: skip
    calls = first["choices"][0]["message"]["tool_calls"]
    assert len(calls) == 1 and first["choices"][0]["finish_reason"] == "tool_calls"
    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "Sunny"},
    ]
    chat(client, {"model": "llama", "messages": history, "tools": [TOOL], "max_tokens": 4})


@pytest.mark.parametrize("model", ["nemo", "oss", "coder"])
def test_a_streamed_call_joins_to_a_whole_call_with_no_markup_in_content(
    client: TestClient, model: str
) -> None:
    body = {
        "model": model,
        "messages": QUESTION,
        "tools": [tool(model)],
        "tool_choice": FORCED,
        "max_tokens": 90,
        "temperature": 0,
        "stream": True,
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    content, arguments, finish = "", "", None
    names: list[str] = []
    for chunk in sse_chunks(response):
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            for piece in delta.get("tool_calls") or []:
                names += [piece["function"]["name"]] if piece["function"].get("name") else []
                arguments += piece["function"].get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    assert content == "" and names == ["get_weather"] and finish == "tool_calls"
    assert isinstance(json.loads(arguments)["city"], str)


def test_a_familys_own_thinking_markers_split_the_reasoning(client: TestClient) -> None:
    """Cohere's template opens <|START_THINKING|> in the prompt: all SmolLM2 writes (it never
    writes <|END_THINKING|>) is reasoning, whole and streamed."""
    body = {"model": "cohere", "messages": QUESTION, "max_tokens": 12}
    answer = chat(client, body)
    message = answer["choices"][0]["message"]
    assert message["reasoning_content"].strip() and not message["content"]
    usage = answer["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == usage["completion_tokens"]
    response = client.post("/v1/chat/completions", json={**body, "temperature": 0, "stream": True})
    chunks = sse_chunks(response)
    streamed = "".join(
        c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"]
    )
    shown = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed.strip() and shown == ""


@pytest.fixture(scope="module")
def corpus_client() -> Iterator[TestClient]:
    """SmolLM2 under every template whose call layout is learned, one slot each."""
    models = [
        {
            "name": name,
            "path": str(model_file("smollm2")),
            "n_ctx": 2048,
            "slots": 1,
            "threads": 2,
            "chat_template_file": str(corpus_dir() / f"{name}.jinja"),
        }
        for name in (*LEARNED, *DECLARED)
        if name in corpus()
    ]
    settings = make_settings(models=models)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def keeps_the_prompt(name: str, history: list[dict[str, Any]]) -> bool:
    """Whether the template renders the first turn's prompt again as the start of the next
    (some drop the thinking block their generation prompt opens, or write it otherwise)."""
    template = ChatTemplate(
        (corpus_dir() / f"{name}.jinja").read_text(), bos_token="<s>", eos_token="</s>"
    )
    turns = [
        message_to_template_dict(m["role"], m.get("content"), {
            "tool_calls": [
                {**c, "function": {**c["function"],
                                   "arguments": json.loads(c["function"]["arguments"])}}
                for c in m.get("tool_calls") or []
            ] or None,
            "tool_call_id": m.get("tool_call_id"),
        })
        for m in history
    ]  # fmt: skip
    tools = [XML_TOOL]
    prompt = template.render(turns[:1], add_generation_prompt=True, tools=tools)
    return template.render(turns, add_generation_prompt=True, tools=tools).startswith(prompt)


@pytest.mark.parametrize("name", [n for n in (*LEARNED, *DECLARED) if n in corpus()] or ["none"])
def test_the_next_turn_reuses_the_whole_forced_call_from_the_cache(
    corpus_client: TestClient, name: str
) -> None:
    """Issue 25: under each family's template, a forced call is what the template renders
    for it in the next turn, and the next turn's prompt holds the tokens the model wrote, so
    the whole first turn comes from the KV cache. (The city is one of a list: SmolLM2 ends
    a raw XML string with markers of its own invention and writes on.)"""
    first = chat(
        corpus_client,
        {"model": name, "messages": QUESTION, "tools": [XML_TOOL], "tool_choice": FORCED,
         "max_tokens": 200},
    )  # fmt: skip
    (call,) = first["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"])["city"] in ("Paris", "London", "Tokyo")
    history: list[dict[str, Any]] = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Sunny"},
    ]
    second = chat(
        corpus_client, {"model": name, "messages": history, "tools": [XML_TOOL], "max_tokens": 2}
    )
    assert_reused(name, history, first, second)


def assert_reused(
    name: str, history: list[dict[str, Any]], first: dict[str, Any], second: dict[str, Any]
) -> None:
    """The next turn (``second``, answering ``history``) reused the whole of the first."""
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    usage = first["usage"]
    if keeps_the_prompt(name, history):
        # All the prompt and every token written but the end-of-turn token, which the next
        # turn's text may hold as text.
        assert cached >= usage["prompt_tokens"] + usage["completion_tokens"] - 1
    else:
        assert cached < usage["prompt_tokens"]  # the template changed the prompt itself


NESTED_TOOL = {
    "type": "function",
    "function": {
        "name": "get_forecast",
        "description": "Get the forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
                "options": {
                    "type": "object",
                    "properties": {
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                        "hourly": {"type": "boolean"},
                    },
                    "required": ["unit", "hourly"],
                },
            },
            "required": ["city", "options"],
        },
    },
}
NO_ARGUMENTS_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now.",
        "parameters": {"type": "object", "properties": {}},
    },
}


@pytest.mark.parametrize(
    "name",
    [
        "ByteDance-Seed-OSS",  # an object parameter as Python writes it: {'unit': 'celsius'}
        "google-gemma-4-31B-it",  # Gemma's syntax: {city:<|"|>Paris<|"|>,options:{...}}
        "deepseek-ai-DeepSeek-V4",  # DSML parameters, an empty line for a call without any
        "deepseek-ai-DeepSeek-V3.1",  # no `tools` in the template: described in the prompt
        "openbmb-MiniCPM5-1B",  # XML parameters, objects as Python writes them
        "LFM2.5-8B-A1B",  # Python-style calls: get_forecast(city='Paris', options={...})
        "CohereForAI-c4ai-command-r-plus-tool_use",  # indented JSON, several lines deep
        "MiniMax-M3",  # an XML tree: ]<]minimax[>[<options>]<]minimax[>[<unit>celsius...
    ],
)
def test_calls_in_syntaxes_other_than_json_come_back_as_json_and_are_reused(
    corpus_client: TestClient, name: str
) -> None:
    """Issue 25: arguments the template writes in a syntax of its own come back as JSON
    arguments of the right types, and the next turn, whose history the template writes in
    that syntax again, reuses the first turn from the cache (Gemma's history drops the empty
    thought channel its prompt opens: there the prompt itself changes). A call without
    arguments too."""
    nested: Any = NESTED_TOOL
    if name.startswith("CohereForAI"):  # its template reads additionalProperties of objects
        nested = copy.deepcopy(NESTED_TOOL)
        nested["function"]["parameters"]["properties"]["options"]["additionalProperties"] = False
    for tool_spec, check in (
        (nested, lambda a: a["city"] in ("Paris", "London", "Tokyo")
            and a["options"]["unit"] in ("celsius", "fahrenheit")
            and isinstance(a["options"]["hourly"], bool)),
        (NO_ARGUMENTS_TOOL, lambda a: a == {}),
    ):  # fmt: skip
        function = tool_spec["function"]["name"]  # type: ignore[index]
        forced = {"type": "function", "function": {"name": function}}
        first = chat(
            corpus_client,
            {"model": name, "messages": QUESTION, "tools": [tool_spec], "tool_choice": forced,
             "max_tokens": 200},
        )  # fmt: skip
        (call,) = first["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == function
        assert check(json.loads(call["function"]["arguments"])), call
        history: list[dict[str, Any]] = [
            *QUESTION,
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "Sunny"},
        ]
        second = chat(
            corpus_client,
            {"model": name, "messages": history, "tools": [tool_spec], "max_tokens": 2},
        )
        assert_reused(name, history, first, second)
