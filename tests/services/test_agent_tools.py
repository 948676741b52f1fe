"""The full tool lists Claude Code and Codex send (tests/data/agents, captured from real runs)
plan into grammars: every tool keeps its own grammar (nothing falls back to "any object"),
the keywords a grammar cannot enforce are relaxed, and only ``strict: true`` refuses them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server.api.anthropic.convert import function_tools as anthropic_tools
from server.api.openai.response_items import function_tools as responses_tools
from server.engine.gbnf import validate_gbnf
from server.errors import InvalidRequestError
from server.services.formats import choose_format
from server.services.spec import FunctionTool, ToolChoice
from server.services.templates import ChatTemplate
from server.services.tools import plan_tools
from tests.services.test_formats import LEARNED
from tests.services.test_template_corpus import MISSING, corpus, corpus_dir

DATA = Path(__file__).parent.parent / "data" / "agents"
CLAUDE = json.loads((DATA / "claude_code_tools.json").read_text())
CODEX = json.loads((DATA / "codex_tools.json").read_text())
TOOL_LISTS = {
    "claude-code": lambda: anthropic_tools(CLAUDE["tools"]),
    "claude-code-tool-search": lambda: anthropic_tools(CLAUDE["tools_with_tool_search"]),
    "codex": lambda: responses_tools(CODEX["tools"]),
}
CHOICES = [None, ToolChoice("auto"), ToolChoice("required")]


@pytest.mark.parametrize("client", sorted(TOOL_LISTS))
@pytest.mark.parametrize("choice", CHOICES, ids=["unset", "auto", "required"])
def test_every_tool_an_agent_sends_gets_its_own_grammar(
    client: str, choice: ToolChoice | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="server.services.tools")
    tools = TOOL_LISTS[client]()
    assert len(tools) >= 8
    plan = plan_tools(tools, choice)
    assert plan is not None
    validate_gbnf(plan.grammar.gbnf)
    for tool in tools:
        assert f'"\\"{tool.name}\\""' in plan.grammar.gbnf
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "every non-strict tool" not in logged  # no tool lost its schema


def test_claude_codes_bounds_are_relaxed_and_named_in_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="server.services.tools")
    plan_tools(anthropic_tools(CLAUDE["tools"]), None)
    (line,) = [r.getMessage() for r in caplog.records if "relaxed" in r.getMessage()]
    # The keywords the issue saw refused: maximum, format "uri", a 524,288 maxLength.
    assert "Read: maximum at /properties/offset" in line
    assert "WebFetch: format 'uri' at /properties/url" in line
    assert "Workflow: maxLength 524288 at /properties/script" in line
    assert "ReportFindings: maximum at /properties/findings/items/properties/line" in line


def _strict(tools: tuple[FunctionTool, ...]) -> list[FunctionTool]:
    return [FunctionTool(t.name, t.description, t.parameters, True) for t in tools]


def test_the_same_tools_under_strict_are_refused_naming_a_keyword() -> None:
    with pytest.raises(InvalidRequestError, match="cannot be enforced") as refused:
        plan_tools(_strict(anthropic_tools(CLAUDE["tools"])), None)
    assert refused.value.param == "tools"


def test_anthropic_strict_tool_use_is_kept_strict() -> None:
    webfetch: dict[str, Any] = next(t for t in CLAUDE["tools"] if t["name"] == "WebFetch")
    (tool,) = anthropic_tools([{**webfetch, "strict": True}])
    assert tool.strict is True
    with pytest.raises(InvalidRequestError, match="format 'uri'"):
        plan_tools([tool], None)


@pytest.mark.parametrize("client", sorted(TOOL_LISTS))
def test_every_agents_tools_get_a_grammar_in_every_learned_chat_format(client: str) -> None:
    """Claude Code's and Codex's tools under each family's own call text (issue 25), the XML
    families' included: within the bounds on grammars, never a 400."""
    if not corpus():
        pytest.skip(MISSING)
    for name in LEARNED:
        source = (corpus_dir() / f"{name}.jinja").read_text()
        fmt = choose_format(ChatTemplate(source, bos_token="<s>", eos_token="</s>"), source)
        for choice in (None, ToolChoice("required")):
            plan = plan_tools(TOOL_LISTS[client](), choice, fmt=fmt)
            assert plan is not None, name
            validate_gbnf(plan.grammar.gbnf)
