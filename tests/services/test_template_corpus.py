"""Every real chat template llama.cpp ships renders Hearth's conversations, or refuses one with
a ChatTemplateError (a 400) for a reason named in a table below.

The templates (about seventy models', from vendor/llama.cpp/models/templates in the pinned
llama-cpp-python sdist) are not copied into the repository: ``make templates`` (a step of
``make test``) extracts them into ~/.cache/hearth/templates/llama-cpp-python-VERSION/, or
HEARTH_TEMPLATE_CORPUS names another folder. Without them these tests skip, saying so.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import pytest

from server.errors import ChatTemplateError
from server.services.templates import ChatTemplate, message_to_template_dict

CORPUS_ENV = "HEARTH_TEMPLATE_CORPUS"


def corpus_dir() -> Path:
    """Where the templates are: HEARTH_TEMPLATE_CORPUS, or where `make templates` puts them."""
    configured = os.environ.get(CORPUS_ENV)
    if configured:
        return Path(configured).expanduser()
    version = importlib.metadata.version("llama-cpp-python")
    return Path.home() / ".cache" / "hearth" / "templates" / f"llama-cpp-python-{version}"


def corpus() -> list[str]:
    """The templates' names (file names without .jinja), sorted."""
    folder = corpus_dir()
    return sorted(p.stem for p in folder.glob("*.jinja")) if folder.is_dir() else []


MISSING = (
    f"no chat template corpus in {corpus_dir()}: run `make templates` (make test does it), "
    f"or point {CORPUS_ENV} at a folder of .jinja files"
)
# One skipped case when the corpus is missing, so that the run says why nothing was tested.
NAMES: list[Any] = corpus() or [pytest.param("", marks=pytest.mark.skip(reason=MISSING))]

BOS, EOS = "<|bos|>", "<|eos|>"
CALL_ID = "call_3f9a6c2e8b1d4a7f9c0e5b2d"  # the shape of the ids Hearth writes
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city's name."}},
                "required": ["city"],
            },
        },
    }
]


def conversation() -> list[dict[str, Any]]:
    """System, user, a tool call, its result, user: as Hearth's chat service hands it to a
    template that knows tools (services/chat.py), arguments as a dict, null content as ''."""
    call = {
        "id": CALL_ID,
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
    }
    return [
        message_to_template_dict("system", "You are a terse weather bot.", {}),
        message_to_template_dict("user", "What is the weather like in the capital of France?", {}),
        message_to_template_dict("assistant", None, {"tool_calls": [call]}),
        message_to_template_dict(
            "tool", "Sunny, 21 C", {"tool_call_id": CALL_ID, "name": "get_weather"}
        ),
        message_to_template_dict("user", "And tomorrow?", {}),
    ]


# Where each part of the conversation shows in a prompt that has it.
PARTS = {
    "system": "You are a terse weather bot.",
    "user": "capital of France?",
    "tool list": "Get the current weather in a city.",
    "tool call": "Paris",
    "tool result": "Sunny, 21 C",
    "last user": "And tomorrow?",
}

# Variables a template needs beyond Hearth's (a request sends them as chat_template_kwargs).
EXTRA_VARIABLES: dict[str, tuple[dict[str, Any], str]] = {
    "fireworks-ai-llama-3-firefunction-v2": (
        {"functions": json.dumps([t["function"] for t in TOOLS]), "datetime": "Jun 01 2025"},
        "reads its tool list from `functions` (JSON text) and the date from `datetime`, "
        "whatever the conversation; Hearth and llama-server fill both in themselves, the date "
        "as today's: fixed here so that renderings compare",
    ),
}

# Templates that refuse the conversation above: the message their error carries, and why.
REFUSALS: dict[str, tuple[str, str]] = {
    "google-gemma-2-2b-it": (
        "System role not supported",
        "Gemma 2 has no system role (llama-server folds the system message into the first "
        "user turn instead; Hearth passes messages as sent)",
    ),
    **{
        name: (
            "conversation roles must alternate",
            "Mistral templates leave tool calls and results out of their alternation check, "
            "so the user turn after the tool result follows the first user turn",
        )
        for name in (
            "Mistral-Small-3.2-24B-Instruct-2506",
            "mistralai-Ministral-3-14B-Reasoning-2512",
            "mistralai-Mistral-Nemo-Instruct-2407",
        )
    },
}

# Templates that render the conversation but leave parts of it out, by design: which, and why.
OMISSIONS: dict[str, tuple[set[str], str]] = {
    "HuggingFaceTB-SmolLM3-3B": (
        {"tool list", "tool call"},
        "takes tools only from its own `xml_tools`/`python_tools` variables and writes no "
        "assistant tool_calls",
    ),
    "LFM2-8B-A1B": ({"tool call"}, "writes an assistant turn's content only"),
    "LFM2.5-Instruct": ({"tool call"}, "writes an assistant turn's content only"),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ({"tool list"}, "no tool list"),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ({"tool list"}, "no tool list"),
    "deepseek-ai-DeepSeek-V3.1": ({"tool list"}, "no tool list"),
    "ibm-granite-granite-3.3-2B-Instruct": (
        {"tool call"},
        "writes each message's content only",
    ),
    "llama-cpp-rwkv-world": (
        {"tool list", "tool call", "tool result"},
        "system, user and assistant text only",
    ),
    "microsoft-Phi-3.5-mini-instruct": (
        {"tool list", "tool call", "tool result"},
        "system, user and assistant text only",
    ),
}

# Templates that concatenate tool-call arguments as text: ChatTemplate finds that out by
# rendering a call both ways, and hands them JSON text instead of a dict.
ARGUMENTS_AS_TEXT = {
    "meetkai-functionary-medium-v3.2",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
}
# Templates whose turn of calls gets null content (as OpenAI clients send it) instead of "":
# only where "" leaves the calls out (ChatTemplate finds that out by rendering both).
CONTENT_AS_NULL = {"deepseek-ai-DeepSeek-R1-Distill-Llama-8B"}


@functools.cache
def load(name: str) -> ChatTemplate:
    source = (corpus_dir() / f"{name}.jinja").read_text(encoding="utf-8")
    return ChatTemplate(source, bos_token=BOS, eos_token=EOS)


def extra_variables(name: str) -> dict[str, Any]:
    return EXTRA_VARIABLES.get(name, ({}, ""))[0]


@pytest.mark.parametrize("name", NAMES)
def test_renders_a_tool_conversation_or_refuses_it_for_a_named_reason(name: str) -> None:
    template = load(name)
    messages = conversation()
    render = functools.partial(template.render, tools=TOOLS, extra=extra_variables(name))
    if name in REFUSALS:
        expected, _why = REFUSALS[name]
        with pytest.raises(ChatTemplateError, match=f"(?i){expected}") as info:
            render(messages)
        assert info.value.status_code == 400
        return
    prompt = render(messages)
    left_out = OMISSIONS.get(name, (set(), ""))[0]
    missing = {part for part, text in PARTS.items() if text not in prompt}
    assert missing == left_out, prompt
    assert messages == conversation(), "the template changed the caller's messages"


@pytest.mark.parametrize("name", NAMES)
def test_every_template_renders_a_single_user_message(name: str) -> None:
    prompt = load(name).render(
        [message_to_template_dict("user", "Hello there, model.", {})],
        extra=extra_variables(name),
    )
    assert "Hello there, model." in prompt


@pytest.mark.parametrize("name", NAMES)
def test_arguments_go_as_text_only_where_the_template_needs_it(name: str) -> None:
    assert load(name).arguments_as_text == (name in ARGUMENTS_AS_TEXT)
    assert load(name).content_as_text == (name not in CONTENT_AS_NULL)


@pytest.mark.skipif(not corpus(), reason=MISSING)
def test_the_tables_name_only_templates_of_the_corpus() -> None:
    tables = (
        EXTRA_VARIABLES,
        REFUSALS,
        OMISSIONS,
        dict.fromkeys(ARGUMENTS_AS_TEXT),
        dict.fromkeys(CONTENT_AS_NULL),
    )
    assert {name for table in tables for name in table} <= set(corpus())
    assert not set(REFUSALS) & set(OMISSIONS)


@pytest.mark.skipif("CohereForAI-c4ai-command-r-plus-tool_use" not in corpus(), reason=MISSING)
def test_a_template_that_writes_every_parameters_description_takes_tools_without_one() -> None:
    """Command R+'s template writes each parameter's description and failed (a 400) on a
    tool whose parameters have none, as agents often send them: they get an empty one."""
    name = "CohereForAI-c4ai-command-r-plus-tool_use"
    template = ChatTemplate((corpus_dir() / f"{name}.jinja").read_text(), bos_token=BOS)
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    user = [message_to_template_dict("user", "Weather?", {})]
    prompt = template.render(user, tools=[tool])
    assert "city (Optional[str]): \n" in prompt and template.describes_parameters
    assert "description" not in tool["function"]["parameters"]["properties"]["city"]  # type: ignore[index]
