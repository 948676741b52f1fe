"""Command R+'s arguments, written as indented JSON (``tojson(indent=4)|indent(8)``): the
grammar takes exactly the text the template writes, at every depth, and no other spelling;
the text reads back as compact JSON. The grammar is checked by llama.cpp's own sampler."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.engine.grammar import FunctionSpec
from server.services.formats.calls import LayoutCallParser, layout_grammar
from server.services.formats.indented_args import Indented
from tests.grammar_accepts import Vocab, accepts, vocab  # noqa: F401 (a fixture)
from tests.services.test_formats import layout
from tests.services.test_template_corpus import MISSING, corpus

NAME = "CohereForAI-c4ai-command-r-plus-tool_use"
pytestmark = pytest.mark.skipif(NAME not in corpus(), reason=MISSING)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "options": {
            "type": "object",
            "properties": {
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "hourly": {"type": "boolean"},
                "note": {"type": "string"},
            },
            "required": ["unit", "hourly"],
        },
        "tags": {"type": "array", "items": {"type": "string"}},
        "extra": {"type": "object"},
        "choice": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "null"}]},
    },
    "required": ["city"],
    "$defs": {
        "point": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        }
    },
}
FUNCTIONS = [FunctionSpec("get_forecast", SCHEMA)]
ARGUMENTS = [
    {"city": "Zürich"},
    {"city": "Paris", "options": {"unit": "celsius", "hourly": True}, "tags": []},
    {
        "city": 'a "b"\n',
        "options": {"unit": "fahrenheit", "hourly": False, "note": "日本"},
        "tags": ["x", "y"],
        "extra": {"a": [1, 2.5, {"b": None, "c": {}}], "d": "e"},
        "choice": {"y": 3},
    },
    {"city": "Oslo", "extra": {}, "choice": None},  # (in the order the grammar writes)
]


def test_the_template_writes_arguments_indented() -> None:
    chosen = layout(NAME)
    assert (chosen.dialect, chosen.form) == ("indented", Indented(4, 8))
    assert (
        chosen.syntax.write({"a": [1]})
        == '{\n            "a": [\n                1\n            ]\n        }'
    )


@pytest.mark.parametrize("arguments", ARGUMENTS)
def test_the_grammar_takes_the_templates_text_and_no_other_spelling(
    vocab: Vocab,  # noqa: F811 (the fixture)
    arguments: dict[str, Any],
) -> None:
    chosen = layout(NAME)
    grammar = layout_grammar(chosen, FUNCTIONS, "one", parallel=False).gbnf
    text = chosen.text([("get_forecast", "", json.dumps(arguments))])
    assert accepts(vocab, grammar, text)
    compact = text.replace(chosen.syntax.write(arguments), json.dumps(arguments))
    assert not accepts(vocab, grammar, compact)
    # One space too many at one depth is refused too.
    assert not accepts(vocab, grammar, text.replace("\n            ", "\n             ", 1))


def test_the_text_reads_back_as_compact_json() -> None:
    chosen = layout(NAME)
    for arguments in ARGUMENTS:
        text = chosen.text([("get_forecast", "", json.dumps(arguments))])
        parser = LayoutCallParser(chosen, FUNCTIONS)
        for ch in text:  # one character at a time
            assert parser.feed(ch)[0] == ""
        assert parser.finish() == ""
        assert [c.arguments for c in parser.calls] == [json.dumps(arguments, ensure_ascii=False)]


def test_arguments_that_are_not_an_object_or_nest_too_deep_are_refused() -> None:
    form = Indented(4, 8)
    for text in ("[1]", "3", "{", "[" * 100_000 + "]" * 100_000):
        with pytest.raises(ValueError):
            form.to_json(text)
    assert form.to_json('{\n    "a": 1\n}') == '{"a": 1}'


# Review findings, each failing before its fix.


def test_the_grammar_grows_with_the_members_not_their_square() -> None:
    chosen = layout(NAME)
    many = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(500)}}
    # (Before, the rules for 500 optional members passed the grammar's size bound, 256 KB,
    # and 8,000 took a gigabyte on the way to that refusal.)
    grammar = layout_grammar(chosen, [FunctionSpec("f", many)], "one", parallel=False).gbnf
    assert len(grammar) < 150_000


def test_options_beside_properties_keep_the_arguments_an_object(vocab: Vocab) -> None:  # noqa: F811
    chosen = layout(NAME)
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
    }
    grammar = layout_grammar(chosen, [FunctionSpec("f", schema)], "one", parallel=False).gbnf
    text = chosen.text([("f", "", json.dumps({"a": "x"}))])
    assert accepts(vocab, grammar, text)
    written = chosen.syntax.write({"a": "x"})
    assert not accepts(vocab, grammar, text.replace(written, '"hello"'))
