"""Chat formats learned from llama.cpp's corpus of real chat templates: each family's call text
is exactly what its template renders, the grammar is built from that text, and the parser
reads it back whole and in every split."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from server.engine.gbnf import validate_gbnf
from server.engine.grammar import FunctionSpec
from server.models.config import ChatFormatName
from server.services.chat import _template_messages
from server.services.formats import (
    CHAT_FORMATS,
    FAMILIES,
    HOUSE,
    ChatFormat,
    choose_format,
    gemma_args,
    pythonic_args,
)
from server.services.formats.calls import (
    LayoutCallParser,
    Mode,
    layout_grammar,
    trigger_pattern,
)
from server.services.formats.families import harmony
from server.services.formats.layout import ID, INDEX, CallLayout, learn_layout
from server.services.reasoning import ThinkSplitter
from server.services.spec import FunctionTool, PastCall, ToolChoice, Turn
from server.services.templates import ChatTemplate, message_to_template_dict
from server.services.tools import plan_tools
from tests.services.test_template_corpus import MISSING, corpus, corpus_dir

# The templates whose call text is learned (arguments as JSON, or parameter by parameter),
# and the family each is read as. The others keep the house format: templates that know no
# tools.
LEARNED = {
    "ByteDance-Seed-OSS": "seed",
    "google-gemma-4-31B-it": "gemma",
    "openbmb-MiniCPM5-1B": "generic",
    "LFM2.5-8B-A1B": "lfm2",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": "deepseek",
    # (Its calls are written only for null content and arguments given as text.)
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": "deepseek",
    "fireworks-ai-llama-3-firefunction-v2": "generic",
    "google-gemma-4-31B-it-interleaved": "gemma",
    "Reka-Edge": "hermes",
    "deepseek-ai-DeepSeek-V3.1": "deepseek",
    "deepseek-ai-DeepSeek-V4": "deepseek",
    "deepseek-ai-DeepSeek-V4-Flash-0731": "deepseek",
    "Apertus-8B-Instruct": "generic",
    "Apriel-1.6-15b-Thinker-fixed": "generic",
    "Bielik-11B-v3.0-Instruct": "hermes",
    "Cohere2MoE": "command_r",
    "CohereForAI-c4ai-command-r-plus-tool_use": "generic",  # arguments as indented JSON
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": "command_r",
    "GLM-4.6": "glm",
    "GLM-4.7-Flash": "glm",
    "GigaChat3-10B-A1.8B": "generic",
    "GigaChat3.1-10B-A1.8B": "generic",
    "Kimi-K2-Instruct": "kimi",
    "Kimi-K2-Thinking": "kimi",
    "Kimi-K3": "generic",
    "MiMo-VL": "hermes",
    "MiniMax-M1": "generic",
    "MiniMax-M2": "minimax",
    "MiniMax-M3": "minimax",  # arguments as an XML tree
    "Mistral-Small-3.2-24B-Instruct-2506": "mistral",
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": "qwen3_coder",
    "NVIDIA-Nemotron-Nano-v2": "generic",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "hermes",
    "Qwen-QwQ-32B": "hermes",
    "Qwen-Qwen2.5-7B-Instruct": "hermes",
    "Qwen-Qwen3-0.6B": "hermes",
    "Qwen3-Coder": "qwen3_coder",
    "Qwen3.5-4B": "qwen3_coder",
    "Spark2.5": "glm",
    "StepFun3.5-Flash": "qwen3_coder",
    "deepseek-ai-DeepSeek-V3.2": "deepseek",
    "ibm-granite-granite-4.0": "hermes",
    "ibm-granite-granite-4.1": "hermes",
    "inclusionai-ling-3.0-flash": "glm",
    "llama-cpp-deepseek-r1": "deepseek",
    "meetkai-functionary-medium-v3.1": "functionary",
    "meetkai-functionary-medium-v3.2": "functionary",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct": "llama3",
    "meta-llama-Llama-3.3-70B-Instruct": "llama3",
    "mistralai-Ministral-3-14B-Reasoning-2512": "mistral",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral",
    "moonshotai-Kimi-K2": "kimi",
    "muse-glimmer": "generic",
    "openai-gpt-oss-120b": "harmony",
    "poolside-Laguna-S-2.1": "glm",
    "poolside-Laguna-XS-2.1": "glm",
    "poolside-Laguna-XS.2": "glm",
    "tencent-Hy3": "glm",
    "unsloth-Apriel-1.5": "hermes",
    "unsloth-mistral-Devstral-Small-2507": "mistral",
    "upstage-Solar-Open-100B": "generic",
}
# Templates that refuse (Llama 3.x) or drop (gpt-oss, GigaChat) a second call in a turn.
# Templates that leave past calls out of the history: their family's declared call text,
# written into the turn (DECLARED[name] is the family).
DECLARED = {
    "LFM2-8B-A1B": "lfm2",
    "LFM2.5-Instruct": "lfm2",
    "ibm-granite-granite-3.3-2B-Instruct": "granite",
}
SINGLE = {
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",  # its end of calls comes only after a second
    "GigaChat3-10B-A1.8B",
    "GigaChat3.1-10B-A1.8B",
    "meta-llama-Llama-3.1-8B-Instruct",
    "meta-llama-Llama-3.2-3B-Instruct",
    "meta-llama-Llama-3.3-70B-Instruct",
    "openai-gpt-oss-120b",
}
NAMES: list[Any] = [n for n in corpus() if n in LEARNED] or [
    pytest.param("", marks=pytest.mark.skip(reason=MISSING))
]
# (Parameters described: Command R+'s template writes each one's description.)
FUNCTIONS = [
    FunctionSpec(
        "get_weather",
        {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "A city."}},
            "required": ["city"],
        },
    ),
    FunctionSpec(
        "add", {"type": "object", "properties": {"a": {"type": "array", "description": "Terms."}}}
    ),
]
CALLS = [
    ("get_weather", "a1b2c3d4e", {"city": 'Zürich "old town" {}\n'}),
    ("add", "f5g6h7i8j", {"a": [1, 2.5, {"b": None, "c": "日本"}]}),
]


@functools.cache
def template(name: str) -> ChatTemplate:
    return ChatTemplate(
        (corpus_dir() / f"{name}.jinja").read_text(), bos_token="<s>", eos_token="</s>"
    )


@functools.cache
def layout(name: str) -> CallLayout:
    learned = learn_layout(template(name))
    assert learned is not None, f"{name}: no layout learned"
    return learned


def written(name: str, count: int) -> str:
    """The text of the first ``count`` of CALLS in the template's layout."""
    chosen = layout(name)
    return chosen.text(
        [(n, i, json.dumps(a, ensure_ascii=chosen.ascii)) for n, i, a in CALLS[:count]]
    )


@pytest.mark.skipif(not corpus(), reason=MISSING)
def test_exactly_the_templates_with_json_calls_get_a_learned_layout() -> None:
    learned: dict[str, str] = {}
    declared: dict[str, str] = {}
    for name in corpus():
        source = (corpus_dir() / f"{name}.jinja").read_text()
        fmt = choose_format(template(name), source)
        if fmt.layout is not None:
            (declared if fmt.in_content else learned)[name] = fmt.family.name
    assert learned == LEARNED
    assert declared == DECLARED
    assert {n for n in LEARNED if not layout(n).parallel} == SINGLE


@pytest.mark.parametrize("name", NAMES)
def test_the_call_text_is_what_the_template_renders_for_the_call(name: str) -> None:
    """What the grammar makes the model write after the generation prompt is, byte for byte,
    what the template renders for that call in the next turn's history."""
    count = 1 if name in SINGLE else 2
    tools = [
        {
            "type": "function",
            "function": {"name": f.name, "description": "A tool.", "parameters": f.parameters},
        }
        for f in FUNCTIONS
    ]
    user = [message_to_template_dict("user", "Weather in Zürich?", {})]
    calls = [
        {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
        for n, i, a in CALLS[:count]
    ]
    prompt = template(name).render(user, add_generation_prompt=True, tools=tools)
    results = [
        message_to_template_dict("tool", "Sunny", {"tool_call_id": i, "name": n})
        for n, i, _ in CALLS[:count]
    ]
    # The next turn's history: the calls, then their results (as an agent sends it).
    history = template(name).render(
        [*user, message_to_template_dict("assistant", None, {"tool_calls": calls}), *results],
        add_generation_prompt=True,
        tools=tools,
    )
    text = written(name, count)
    if ID not in layout(name).first:  # ids the model writes are its own; these are given
        assert text in history
    if history.startswith(prompt):  # the template keeps the generation prompt as it was
        assert history[len(prompt) :].startswith(text)


def as_written(name: str, value: Any) -> Any:
    """``value`` as the template writes it: MiniMax-M3's XML tree has no null members."""
    if layout(name).dialect != "xmltree":
        return value
    if isinstance(value, dict):
        return {k: as_written(name, v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [as_written(name, v) for v in value]
    return value


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("step", [1, 3, 1000])
def test_the_parser_reads_the_calls_back_in_every_split(name: str, step: int) -> None:
    count = 1 if name in SINGLE else 2
    text = written(name, count)
    parser = LayoutCallParser(layout(name), FUNCTIONS)
    content = ""
    arguments: dict[int, str] = {}
    ids: dict[int, tuple[str | None, str | None]] = {}
    for i in range(0, len(text), step):
        piece, deltas = parser.feed(text[i : i + step])
        content += piece
        for d in deltas:
            arguments[d.index] = arguments.get(d.index, "") + d.arguments
            if d.id is not None:
                ids[d.index] = (d.id, d.name)
    content += parser.finish()
    assert content == ""
    # The arguments are the model's text (escaped where the template escapes them; where it
    # leaves null members out, without them).
    ascii = layout(name).ascii
    expected = [
        (n, json.dumps(as_written(name, a), ensure_ascii=ascii)) for n, _, a in CALLS[:count]
    ]
    assert [(c.name, c.arguments) for c in parser.calls] == expected
    assert [arguments[i] for i in range(count)] == [a for _, a in expected]
    assert [ids[i][1] for i in range(count)] == [n for n, _ in expected]
    for call in parser.calls:
        if ID in layout(name).first:
            assert call.id in {i for _, i, _ in CALLS}  # the id the model wrote
        elif layout(name).id_form == "short":
            assert len(call.id) == 9 and call.id.isalnum()
        else:
            assert call.id.startswith("call_")


@pytest.mark.parametrize("name", NAMES)
def test_a_call_cut_short_is_never_content(name: str) -> None:
    text = written(name, 1)
    for cut in range(len(layout(name).opener) + 1, len(text) - 2, 7):
        parser = LayoutCallParser(layout(name), FUNCTIONS)
        content, _ = parser.feed(text[:cut])
        content += parser.finish(partial_as_content=False)
        assert content.strip() == "" or content.strip() == layout(name).preamble.strip(), cut


@pytest.mark.parametrize("name", NAMES)
def test_text_around_calls_and_unknown_functions_stay_content(name: str) -> None:
    chosen = layout(name)
    if not chosen.opener.strip():  # functionary v3.2: a call only at the start
        pytest.skip("its calls have no opener")
    parser = LayoutCallParser(chosen, FUNCTIONS)
    unknown = chosen.text([("no_such_tool", "a1b2c3d4e", "{}")])
    content, deltas = parser.feed("Let me see. " + unknown[len(chosen.preamble) :])
    content += parser.finish()
    assert not parser.calls and not deltas
    assert content == "Let me see. " + unknown[len(chosen.preamble) :]


@pytest.mark.parametrize("name", NAMES)
def test_grammars_for_every_choice_are_valid_gbnf(name: str) -> None:
    modes: tuple[Mode, ...] = ("auto", "required", "one")
    for mode in modes:
        functions = FUNCTIONS[:1] if mode == "one" else FUNCTIONS
        grammar = layout_grammar(layout(name), functions, mode, parallel=True)
        validate_gbnf(grammar.gbnf)
        assert bool(grammar.triggers) == (mode == "auto")
        several = "call-next" in grammar.gbnf or "call-1 " in grammar.gbnf
        assert several == (mode != "one" and name not in SINGLE)


def test_each_family_opens_auto_calls_at_its_own_marker() -> None:
    if not corpus():
        pytest.skip(MISSING)
    expected = {
        "Qwen-Qwen2.5-7B-Instruct": "<tool_call>",
        "mistralai-Mistral-Nemo-Instruct-2407": r"\[TOOL_CALLS\]",
        "unsloth-mistral-Devstral-Small-2507": r"\[TOOL_CALLS\]",
        "moonshotai-Kimi-K2": r"<\|tool_calls_section_begin\|>",
        "meta-llama-Llama-3.1-8B-Instruct": r'^\s{0,8}(\{"name": ")',
        "meetkai-functionary-medium-v3.2": r"^\s{0,8}((?:get_weather|add)\n)",
        "openai-gpt-oss-120b": r"to=functions\.",
    }
    for name, pattern in expected.items():
        assert trigger_pattern(layout(name), FUNCTIONS) == pattern, name


def test_ids_numbers_and_preambles_where_templates_write_them() -> None:
    if not corpus():
        pytest.skip(MISSING)
    assert ID in layout("mistralai-Mistral-Nemo-Instruct-2407").first  # after the arguments
    assert layout("mistralai-Mistral-Nemo-Instruct-2407").id_form == "short"
    assert ID in layout("Mistral-Small-3.2-24B-Instruct-2506").first
    assert INDEX in layout("moonshotai-Kimi-K2").first  # functions.NAME:0
    assert INDEX in layout("CohereForAI-c4ai-command-r7b-12-2024-tool_use").first
    # Qwen3 writes an empty thinking block before the calls of a turn that ends the
    # conversation, and none once results follow: the layout is the latter's.
    assert layout("Qwen-Qwen3-0.6B").preamble == ""
    assert layout("Kimi-K2-Thinking").preamble == "<think></think>"
    assert layout("Kimi-K2-Thinking").opener.startswith("<|tool_calls_section_begin|>")
    kimi = layout("moonshotai-Kimi-K2").text([("a", "", "{}"), ("b", "", "{}"), ("c", "", "{}")])
    assert "functions.a:0" in kimi and "functions.b:1" in kimi and "functions.c:2" in kimi


def test_a_template_that_knows_no_tools_keeps_the_house_format() -> None:
    plain = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert choose_format(ChatTemplate(plain), plain).name == "house"
    if corpus():
        name = "Qwen-Qwen2.5-7B-Instruct"
        source = (corpus_dir() / f"{name}.jinja").read_text()
        assert choose_format(template(name), source, "house") is HOUSE
        assert choose_format(template(name), source, "llama3").family.name == "llama3"


def test_the_setting_names_every_format() -> None:
    assert set(ChatFormatName.__args__) == set(CHAT_FORMATS)  # type: ignore[attr-defined]


def test_text_that_only_looks_like_a_call_is_released_not_held() -> None:
    """Llama's opener may appear in plain content, where no grammar holds the model to a
    call: a 'name' that runs on past any function's length is content, as it comes."""
    if not corpus():
        pytest.skip(MISSING)
    parser = LayoutCallParser(layout("meta-llama-Llama-3.1-8B-Instruct"), FUNCTIONS)
    shown = ""
    for _ in range(200):
        shown += parser.feed("a" * 10)[0]
    assert shown == "a" * 2000
    parser = LayoutCallParser(layout("meta-llama-Llama-3.1-8B-Instruct"), FUNCTIONS)
    shown = parser.feed('Say {"name": "')[0]
    for _ in range(200):
        shown += parser.feed("b" * 10)[0]
    assert shown.startswith('Say {"name": "b') and len(shown) > 1900
    assert not parser.calls


PARAMETERS = [n for n in NAMES if isinstance(n, str) and layout(n).params is not None]


@pytest.mark.parametrize("name", PARAMETERS or [pytest.param("", marks=pytest.mark.skip)])
def test_parameter_by_parameter_arguments_keep_their_types(name: str) -> None:
    """XML-like arguments are read back by their kind: the marker before the value where the
    template has one per kind (DeepSeek's string="false"), else the parameter's schema."""
    arguments = {"s": "x <y> 7", "i": 3, "f": 2.5, "b": False, "n": None, "o": {"k": [1, "2"]},
                 "t": "true"}  # fmt: skip
    types = {"s": "string", "i": "integer", "f": "number", "b": "boolean", "n": "null",
             "o": "object", "t": "string"}  # fmt: skip
    function = FunctionSpec(
        "typed", {"type": "object", "properties": {k: {"type": t} for k, t in types.items()}}
    )
    text = layout(name).text([("typed", "a1b2c3d4e", json.dumps(arguments))])
    for step in (1, len(text)):
        parser = LayoutCallParser(layout(name), [function])
        content = "".join(parser.feed(text[i : i + step])[0] for i in range(0, len(text), step))
        content += parser.finish()
        assert content == ""
        assert [json.loads(c.arguments) for c in parser.calls] == [arguments]
    grammar = layout_grammar(layout(name), [function], "one", parallel=False)
    validate_gbnf(grammar.gbnf)


def test_gpt_oss_thinking_then_calling_gives_reasoning_and_a_call_only() -> None:
    """gpt-oss thinks in the analysis channel, then calls in the commentary channel: the
    reasoning splitter and the call parser leave no Harmony markup in the content."""
    if not corpus():
        pytest.skip(MISSING)
    markers = harmony.FAMILY.reasoning
    assert markers is not None
    output = (
        "<|channel|>analysis<|message|>The user wants weather.<|end|><|start|>assistant"
        "<|channel|>commentary to=functions.get_weather<|channel|>commentary json<|message|>"
        '{"city": "Paris"}'
    )
    splitter = ThinkSplitter(thinking=False, markers=markers)
    parser = LayoutCallParser(layout("openai-gpt-oss-120b"), FUNCTIONS)
    reasoning, content = "", ""
    for ch in output:
        thought, text = splitter.feed(ch)
        reasoning += thought
        content += parser.feed(text)[0]
    thought, text = splitter.finish()
    content += parser.feed(text)[0] + parser.finish()
    assert reasoning == "The user wants weather."
    assert content == ""
    assert [(c.name, c.arguments) for c in parser.calls] == [("get_weather", '{"city": "Paris"}')]


def test_gemma_arguments_read_back_as_json_and_bad_ones_are_refused() -> None:
    value = {"q": 'Zürich "old" {x}', "n": [1, 2.5, {"a": None}], "b": True, "e": {}}
    written = gemma_args.write(value)
    assert written == '{b:true,e:{},n:[1,2.5,{a:None}],q:<|"|>Zürich "old" {x}<|"|>}'
    assert json.loads(gemma_args.to_json(written)) == value
    for bad in ('{q:<|"|>open', "{q:1}x", "{q 1}", "{:1}", "[1,,2]", "{q:nope}", "", "{q:1e999}"):
        with pytest.raises(ValueError):
            gemma_args.to_json(bad)
    deep = "[" * 5000 + "]" * 5000  # refused, not a RecursionError
    with pytest.raises(ValueError):
        gemma_args.to_json(deep)


def test_gemma_arguments_that_break_the_syntax_are_content_not_a_call() -> None:
    chosen = layout("google-gemma-4-31B-it")
    text = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,,}<tool_call|>'
    parser = LayoutCallParser(chosen, FUNCTIONS)
    content = "".join(parser.feed(ch)[0] for ch in text) + parser.finish()
    assert parser.calls == []
    assert content.startswith('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,,}')


def test_python_written_objects_read_back_as_json_and_other_text_stays_text() -> None:
    style = layout("ByteDance-Seed-OSS").params
    assert style is not None and style.python_objects
    assert json.loads(style.to_json("object", "{'a': [1, True, None], 'b': 'x\\'y'}")) == {
        "a": [1, True, None],
        "b": "x'y",
    }
    for text in ("__import__('os')", "{'a': {1, 2}}", "{'a': b'x'}", "[" * 400 + "]" * 400):
        assert json.loads(style.to_json("object", text)) == text


def test_a_template_that_writes_calls_but_reads_no_tools_gets_them_in_its_own_form() -> None:
    """DeepSeek V3.1's template writes past calls in DeepSeek's text but has no ``tools``:
    the tools go in the system prompt, which shows the call in that text; the history keeps
    its calls and results for the template to write."""
    name = "deepseek-ai-DeepSeek-V3.1"
    chosen = layout(name)
    plan = plan_tools(
        [FunctionTool("get_weather", "Weather.", FUNCTIONS[0].parameters)],
        ToolChoice("auto"),
        fmt=ChatFormat(FAMILIES["deepseek"], chosen),
    )
    history = [
        Turn("user", "Weather in Paris?"),
        Turn("assistant", None, tool_calls=(PastCall("get_weather", '{"city": "Paris"}', "c1"),)),
        Turn("tool", "Sunny", tool_call_id="c1"),
    ]
    messages, tools = _template_messages(history, template(name), plan, chosen)
    assert tools is None  # the template reads none
    assert messages[0]["role"] == "system"
    form = chosen.text([("FUNCTION_NAME", "c0", '{"ARGUMENT": "VALUE"}')])
    assert form.startswith(chosen.opener) and chosen.opener.strip()  # DeepSeek's own markers
    assert form in messages[0]["content"]
    assert '"name": "get_weather"' in messages[0]["content"]
    prompt = template(name).render(messages, add_generation_prompt=True)
    call = chosen.text([("get_weather", "c1", '{"city": "Paris"}')])
    assert call in prompt and "Sunny" in prompt


def test_a_string_the_template_wraps_in_cdata_reads_back_even_holding_the_end_marker() -> None:
    chosen = layout("openbmb-MiniCPM5-1B")
    assert chosen.params is not None and chosen.params.wrap == ("<![CDATA[", "]]>", "<&\n")
    value = 'a</param>b & <c>\nd "e"'
    text = chosen.text([("get_weather", "c1", json.dumps({"city": value}))])
    assert "<![CDATA[" + value + "]]></param>" in text
    for step in (1, 4, 1000):
        parser = LayoutCallParser(chosen, FUNCTIONS)
        content = "".join(parser.feed(text[i : i + step])[0] for i in range(0, len(text), step))
        content += parser.finish()
        assert content == ""
        assert [json.loads(c.arguments) for c in parser.calls] == [{"city": value}]


def test_python_style_arguments_read_back_as_json_and_bad_ones_are_refused() -> None:
    value = {"q": 'a "b" {c}', "n": [1, 2.5, {"a": None, "s": "it's"}], "o": {"k": [True]}}
    written = pythonic_args.write(value)
    assert written == ("""(q='a "b" {c}', n=[1, 2.5, {'a': None, 's': "it's"}], o={"k": [true]})""")
    assert json.loads(pythonic_args.to_json(written)) == value
    for bad in (
        "(q='open)", "(q=1 x=2)", "(=1)", "(q=nope)", "q=1", "(q={1, 2})", "(q=[b'x'])",
        "(q=[__import__('os')])", "(q=" + "[" * 5000 + "]" * 5000 + ")", "(q=1e999)",
    ):  # fmt: skip
        with pytest.raises(ValueError):
            pythonic_args.to_json(bad)


@pytest.mark.parametrize("name", [n for n in corpus() if n in DECLARED] or ["none"])
def test_a_template_that_leaves_calls_out_gets_them_in_the_turns_text(name: str) -> None:
    """LFM2's and Granite 3.3's templates write no call of a past turn: the turn's text holds
    it, in the family's call text, as the model wrote it; so the next turn's prompt holds the
    first turn's prompt and then exactly what the model wrote."""
    if name == "none":
        pytest.skip(MISSING)
    source = (corpus_dir() / f"{name}.jinja").read_text()
    fmt = choose_format(template(name), source)
    assert fmt.in_content and fmt.layout is not None
    function = FunctionTool("get_weather", "Weather.", FUNCTIONS[0].parameters)
    plan = plan_tools([function], ToolChoice("auto"), fmt=fmt)
    assert plan is not None
    question = [Turn("user", "Weather in Paris?")]
    first, tools = _template_messages(question, template(name), plan, fmt.layout, in_content=True)
    prompt = template(name).render(first, add_generation_prompt=True, tools=tools)
    call = fmt.layout.text([("get_weather", "c1", '{"city": "Paris"}')])
    history = [
        *question,
        Turn("assistant", None, tool_calls=(PastCall("get_weather", '{"city": "Paris"}', "c1"),)),
        Turn("tool", "Sunny", tool_call_id="c1"),
    ]
    messages, tools = _template_messages(history, template(name), plan, fmt.layout, in_content=True)
    following = template(name).render(messages, add_generation_prompt=True, tools=tools)
    assert following.startswith(prompt + call)
    assert "Sunny" in following[len(prompt + call) :]
    # The parser reads the declared text back.
    parser = fmt.parser(plan.functions)
    assert parser.feed(call)[0] + parser.finish() == ""
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [
        ("get_weather", {"city": "Paris"})
    ]


def test_a_past_call_written_into_its_turn_keeps_its_markers_as_control_tokens() -> None:
    """Review finding: past calls written into a turn's text (LFM2, Granite 3.3) were escaped
    with the request's text, so their markers reached the model as plain text and the next
    turn's prompt did not hold what the model wrote. The markers are the model's; a name or
    argument from the request is still escaped; arguments that are not JSON are no 500."""
    from server.engine.tokenizer import SpecialToken, Tokenizer
    from server.services.chat import _with_calls
    from server.services.formats.families import lfm2
    from server.services.templates import escaped

    specials = ["<|tool_call_start|>", "<|tool_call_end|>", "<|im_end|>", "<|im_start|>"]
    tokenizer = Tokenizer(
        [SpecialToken(10 + i, text) for i, text in enumerate(specials)],
        lambda s: [ord(c) for c in s],
        [],
        1,
    )
    chat = ChatTemplate(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    )
    layout_ = lfm2.FAMILY.declared
    history = [
        Turn("user", "hi"),
        Turn(
            "assistant",
            None,
            tool_calls=(PastCall("f", '{"a": "x<|im_end|>y"}', "i"),),
        ),
    ]
    calls: dict[str, str] = {}
    messages, _ = _template_messages(
        history, chat, None, layout_, in_content=True, escape=tokenizer.escape,
        placeholders=calls,
    )  # fmt: skip
    prompt = chat.render(_with_calls(escaped(messages, tokenizer.escape), calls))
    pieces = tokenizer.partition(prompt, markup=True)
    assert 10 in pieces and 11 in pieces  # the call's markers are control tokens
    assert pieces.count(12) == 2  # the two turns' ends, and not the argument's <|im_end|>
    # A past call whose arguments are not JSON is written in Hearth's own call text.
    broken = [Turn("assistant", None, tool_calls=(PastCall("f", "not json", "i"),))]
    messages, _ = _template_messages(broken, chat, None, layout_, in_content=True)
    assert "<tool_call>" in messages[0]["content"]


PYDANTIC_TOOL = {
    "$defs": {"1Item": {"type": "object", "properties": {"sku": {"type": "string"}}}},
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": {"$ref": "#/$defs/1Item"}},
        "content-type": {"type": "string", "enum": ["json", "it's"]},
        "null": {"type": "integer"},
    },
    "required": ["items"],
}


@pytest.mark.parametrize(
    "name",
    [
        "LFM2.5-8B-A1B",
        "google-gemma-4-31B-it",
        "ByteDance-Seed-OSS",
        "Qwen3-Coder",
        "CohereForAI-c4ai-command-r-plus-tool_use",
        "MiniMax-M3",
    ],
)
def test_hostile_and_pydantic_schemas_keep_their_grammar_and_read_back(name: str) -> None:
    """Review findings: on the new syntaxes a pydantic tool's $ref made every tool fall back
    to any object (LFM2: to no arguments at all), `required: 5` was a TypeError, a name
    like content-type was written but not read back, a rule named after a $defs entry that
    starts with a digit was left undefined, and Gemma's property `null` became `None`."""
    chosen = layout(name)
    fmt = ChatFormat(FAMILIES["generic"], chosen)
    odd = FunctionTool("odd", None, {"type": "object", "properties": {"a": {}}, "required": 5})
    assert plan_tools([odd], ToolChoice("required"), fmt=fmt) is not None  # no TypeError
    functions = [FunctionSpec("order", PYDANTIC_TOOL), FunctionSpec("free", {"type": "object"})]
    for mode in ("required", "auto"):
        grammar = layout_grammar(chosen, functions, mode, parallel=True)
        validate_gbnf(grammar.gbnf)
        assert "sku" in grammar.gbnf and "content-type" in grammar.gbnf
    arguments = {"items": [{"sku": "a1"}], "content-type": "json", "null": 3}
    text = chosen.text([("order", "c1", json.dumps(arguments))])
    parser = LayoutCallParser(chosen, functions)
    assert parser.feed(text)[0] + parser.finish() == ""
    assert [json.loads(c.arguments) for c in parser.calls] == [arguments]


def test_a_template_reading_functions_and_datetime_gets_them() -> None:
    """Firefunction's template reads its tools as `functions` and the date as `datetime`
    (before, without them, it refused every conversation); a request may set its own date."""
    import time

    chat = template("fireworks-ai-llama-3-firefunction-v2")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    user = [message_to_template_dict("user", "Hi", {})]
    prompt = chat.render(user, tools=tools)
    assert '"name": "get_weather"' in prompt
    assert f"Today is {time.strftime('%b %d %Y')}." in prompt
    assert "Today is Jun 01 2025." in chat.render(
        user, tools=tools, extra={"datetime": "Jun 01 2025"}
    )
