"""Tool calls out of model text: whole, and streamed piece by piece."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.api.openai.chat import chat_spec
from server.engine.grammar import FunctionSpec
from server.errors import InvalidRequestError
from server.protocol.chat import ChatCompletionRequest
from server.services.chat import _template_messages
from server.services.templates import ChatTemplate
from server.services.tools import ToolCallParser, ToolPlan, plan_tools

FUNCTIONS = [FunctionSpec("get_weather", {"type": "object"}), FunctionSpec("add", {})]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_text_then_a_call() -> None:
    parser = ToolCallParser(FUNCTIONS)
    content, deltas = parser.feed("Let me check. " + CALL)
    assert content == "Let me check. "
    (call,) = parser.calls
    assert call.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert deltas[0].id == call.id and deltas[0].name == "get_weather"
    assert "".join(d.arguments for d in deltas) == call.arguments
    assert parser.finish() == ""


def test_streamed_in_small_pieces_gives_the_same_calls_and_arguments_as_they_come() -> None:
    text = "Hi " + CALL + "\n" + CALL.replace("get_weather", "add")
    parser = ToolCallParser(FUNCTIONS)
    content, deltas = "", []
    for i in range(0, len(text), 3):
        piece, new = parser.feed(text[i : i + 3])
        content += piece
        deltas += new
    content += parser.finish(partial_as_content=False)
    assert content == "Hi "
    assert [c.name for c in parser.calls] == ["get_weather", "add"]
    for index, call in enumerate(parser.calls):
        mine = [d for d in deltas if d.index == index]
        assert mine[0].id == call.id and mine[0].name == call.name
        assert "".join(d.arguments for d in mine) == call.arguments
        assert len([d for d in mine if d.arguments]) > 1  # the arguments came in pieces
    whole = ToolCallParser(FUNCTIONS)
    whole.feed(text)
    whole.finish()
    assert [c.arguments for c in whole.calls] == [c.arguments for c in parser.calls]


def test_a_call_cut_short_after_its_head_was_streamed() -> None:
    streamed = ToolCallParser(FUNCTIONS)
    _, deltas = streamed.feed('<tool_call>\n{"name": "add", "arguments": {"a": 1')
    assert deltas[0].name == "add" and deltas[-1].arguments == '{"a": 1'
    assert streamed.finish(partial_as_content=False) == ""
    assert streamed.calls == []
    whole = ToolCallParser(FUNCTIONS)
    whole.feed('<tool_call>\n{"name": "add", "arguments": {"a": 1')
    assert whole.finish() == '<tool_call>\n{"name": "add", "arguments": {"a": 1'


def test_a_partial_tag_is_held_back_until_it_is_clearly_text() -> None:
    parser = ToolCallParser(FUNCTIONS)
    assert parser.feed("a <tool") == ("a ", [])
    assert parser.feed("box") == ("<toolbox", [])


def test_a_malformed_or_unknown_call_stays_text() -> None:
    parser = ToolCallParser(FUNCTIONS)
    bad = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    content, deltas = parser.feed(bad)
    assert (content, deltas, parser.calls) == (bad, [], [])
    cut = ToolCallParser(FUNCTIONS)
    assert cut.feed('<tool_call>{"name": "add"') == ("", [])
    assert cut.finish() == '<tool_call>{"name": "add"'


def _request(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def _plan(**fields: Any) -> ToolPlan | None:
    spec = chat_spec(_request(**fields))
    return plan_tools(spec.tools, spec.tool_choice, parallel=spec.parallel_tool_calls)


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
]


def test_plans_follow_tool_choice() -> None:
    assert _plan() is None
    assert _plan(tools=TOOLS, tool_choice="none") is None
    auto = _plan(tools=TOOLS)
    assert auto is not None and auto.grammar.triggers == ("<tool_call>",)
    required = _plan(tools=TOOLS, tool_choice="required")
    assert required is not None and required.grammar.triggers == ()
    single = _plan(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert single is not None and "tool-call)*" not in single.grammar.gbnf


def _bounded_tool(strict: bool | None) -> list[dict[str, Any]]:
    parameters = {
        "type": "object",
        "properties": {
            "timeout_ms": {"type": "integer", "maximum": 600000},
            "url": {"type": "string", "format": "uri"},
            "script": {"type": "string", "maxLength": 524288},
        },
        "required": ["url"],
    }
    function: dict[str, Any] = {"name": "f", "parameters": parameters}
    if strict is not None:
        function["strict"] = strict
    return [{"type": "function", "function": function}]


def test_a_strict_tool_refuses_what_it_cannot_enforce_naming_the_keyword() -> None:
    with pytest.raises(InvalidRequestError, match="maximum"):
        _plan(tools=_bounded_tool(True))


@pytest.mark.parametrize("strict", [None, False])
def test_a_non_strict_tool_is_relaxed_and_the_relaxation_logged_once(
    strict: bool | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="server.services.tools")
    plan = _plan(tools=_bounded_tool(strict))
    assert plan is not None
    # What the grammar can enforce stays: the property names, "url" required.
    assert '"\\"url\\""' in plan.grammar.gbnf and '"\\"timeout_ms\\""' in plan.grammar.gbnf
    # The template (and so the model) still sees the whole schema, bounds included.
    assert plan.tools[0]["function"]["parameters"]["properties"]["timeout_ms"]["maximum"] == 600000
    (line,) = [r.getMessage() for r in caplog.records if "relaxed" in r.getMessage()]
    for relaxed in ("maximum at /properties/timeout_ms", "format 'uri'", "maxLength 524288"):
        assert relaxed in line


TOOL_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
    "{% for m in messages %}[{{ m.role }}]{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<call {{ c.function.name }} {{ c.function.arguments.city }}>{% endfor %}"
    "\n{% endfor %}"
)
HISTORY = [
    {"role": "user", "content": "Weather in Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
]


def _render(template_source: str) -> str:
    request = _request(messages=HISTORY, tools=TOOLS)
    template = ChatTemplate(template_source)
    spec = chat_spec(request)
    assert spec.messages is not None
    plan = plan_tools(spec.tools, spec.tool_choice)
    messages, tools = _template_messages(spec.messages, template, plan)
    return template.render(messages, tools=tools)


def test_a_template_that_knows_tools_gets_them_and_the_calls_as_values() -> None:
    prompt = _render(TOOL_TEMPLATE)
    assert prompt.startswith("TOOLS:get_weather;")
    assert "[assistant]<call get_weather Rome>" in prompt  # arguments parsed from JSON text
    assert "[tool]Sunny" in prompt


def test_other_templates_get_the_fallback_prompt_and_written_calls() -> None:
    prompt = _render("{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}")
    assert prompt.startswith("[system]You can call functions")
    assert '"name": "get_weather"' in prompt
    assert (
        '[assistant]<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
        in prompt
    )
    assert "[user]<tool_response>\nSunny\n</tool_response>" in prompt
