"""MiniMax-M3's arguments, written as an XML tree behind its marker: the grammar takes the
template's text for nested schemas (checked by llama.cpp's own sampler), the schema types
the leaves when they are read back, and text that is not such a tree is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.engine.grammar import FunctionSpec, SchemaNotSupported
from server.services.formats.calls import LayoutCallParser, layout_grammar
from server.services.formats.xml_tree_args import TreeScan, XmlTree
from tests.grammar_accepts import Vocab, accepts, vocab  # noqa: F401 (a fixture)
from tests.services.test_formats import layout
from tests.services.test_indented_args import SCHEMA
from tests.services.test_template_corpus import MISSING, corpus

NAME = "MiniMax-M3"
M = "]<]minimax[>["
FORM = XmlTree(M)
pytestmark = pytest.mark.skipif(NAME not in corpus(), reason=MISSING)


def test_the_template_writes_arguments_as_a_tree() -> None:
    chosen = layout(NAME)
    assert (chosen.dialect, chosen.form) == ("xmltree", FORM)
    assert FORM.write({"a": [1, {"b": None, "c": True}], "d": None, "e": "x"}) == (
        f"{M}<a>{M}<item>1{M}</item>{M}<item>{M}<c>true{M}</c>{M}</item>{M}</a>{M}<e>x{M}</e>"
    )


@pytest.mark.parametrize(
    "arguments",
    [
        {"city": "Zürich"},
        {"city": "7", "options": {"unit": "celsius", "hourly": True}, "tags": []},
        {
            "city": 'a "b" <c>\n',
            "options": {"unit": "fahrenheit", "hourly": False, "note": "日本"},
            "tags": ["x", "y"],
            "choice": {"x": 3},
        },
    ],
)
def test_the_grammar_takes_the_templates_text_and_the_schema_types_it_back(
    vocab: Vocab,  # noqa: F811 (the fixture)
    arguments: dict[str, Any],
) -> None:
    chosen = layout(NAME)
    functions = [FunctionSpec("get_forecast", SCHEMA)]
    grammar = layout_grammar(chosen, functions, "one", parallel=False).gbnf
    text = chosen.text([("get_forecast", "", json.dumps(arguments))])
    assert accepts(vocab, grammar, text)
    # A closing tag that closes another element, or a boolean spelled as Python, is not.
    assert not accepts(vocab, grammar, text.replace(f"{M}</city>", f"{M}</town>", 1))
    if "options" in arguments:
        wrong = text.replace(f">true{M}", f">True{M}").replace(f">false{M}", f">False{M}")
        assert wrong != text
        assert not accepts(vocab, grammar, wrong)
    # Read back: "7" stays a string where the schema says string; 3 is an integer.
    written = FORM.write(arguments)
    assert json.loads(FORM.to_json(written, SCHEMA)) == arguments


def test_empty_elements_and_untyped_leaves_read_as_the_schema_says() -> None:
    schema = {
        "type": "object",
        "properties": {
            "o": {"type": "object"},
            "l": {"type": "array"},
            "s": {"type": "string"},
            "n": {"type": ["integer", "string"]},
            "free": {},
        },
    }
    text = f"{M}<o>{M}</o>{M}<l>{M}</l>{M}<s>{M}</s>{M}<n>x{M}</n>{M}<free>2.5{M}</free>"
    assert json.loads(FORM.to_json(text, schema)) == {
        "o": {},
        "l": [],
        "s": "",
        "n": "x",
        "free": 2.5,
    }
    assert FORM.to_json("", schema) == "{}"


@pytest.mark.parametrize(
    "text",
    [
        f"{M}<a>1{M}</b>",  # closes another element
        f"text{M}<a>1{M}</a>",  # text beside the elements
        f"{M}<a>1",  # never closed
        f"{M}<n>seven{M}</n>",  # not an integer
        f"{M}<flag>yes{M}</flag>",  # not a boolean
        "".join(f"{M}<a>" for _ in range(50)) + "".join(f"{M}</a>" for _ in range(50)),
    ],
)
def test_text_that_is_not_such_a_tree_is_refused(text: str) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "flag": {"type": "boolean"}},
    }
    with pytest.raises(ValueError):
        FORM.to_json(text, schema)


def test_the_scan_ends_at_the_calls_own_closing_tag_in_every_split() -> None:
    text = f"{M}<a>{M}<item>1{M}</item>{M}</a>{M}<b>x{M}</b>"
    after = f"{M}</invoke>\n"
    for step in (1, 2, 5, 13, 1000):
        scan = TreeScan(M)
        buffer, taken = "", ""
        stream = text + after
        for i in range(0, len(stream), step):
            buffer += stream[i : i + step]
            done = scan.feed(buffer)
            if done >= 0:
                taken += buffer[:done]
                break
            keep = len(buffer) - scan.held
            taken, buffer = taken + buffer[:keep], buffer[keep:]
        assert scan.done and taken == text, step


# Review findings, each failing before its fix.

S = {"type": "string"}


def test_options_keep_the_keywords_beside_them_and_the_arguments_stay_an_object() -> None:
    schema = {
        "type": "object",
        "properties": {"a": S, "b": S, "item": S},
        "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
    }
    text = FORM.write({"a": "5", "b": "true"})
    assert json.loads(FORM.to_json(text, schema)) == {"a": "5", "b": "true"}
    text = FORM.write({"item": "5"})
    assert json.loads(FORM.to_json(text, schema)) == {"item": "5"}  # was [5]


def test_reading_back_under_nested_options_is_bounded() -> None:
    """anyOf tried option by option, deep in a tree, took exponentially long (a stalled
    server): now a bounded number of steps, then a refusal."""
    k = 64

    def obj(ref: str) -> dict[str, Any]:
        return {"type": "object", "properties": {"x": {"$ref": ref}}}

    schema = {
        "type": "object",
        "properties": {"a": {"anyOf": [{"$ref": "#/$defs/n"}, {"$ref": "#/$defs/s"}]}},
        "$defs": {
            "n": {"anyOf": [obj("#/$defs/n")] * k + [{"type": "integer"}]},
            "s": {"anyOf": [obj("#/$defs/s"), S]},
        },
    }
    text = f"{M}<a>" + f"{M}<x>" * 5 + "abc" + f"{M}</x>" * 5 + f"{M}</a>"
    try:
        value = json.loads(FORM.to_json(text, schema))
    except ValueError:
        return
    assert value == {"a": {"x": {"x": {"x": {"x": {"x": "abc"}}}}}}


def test_undeclared_members_and_null_members_read_as_the_schema_says() -> None:
    schema = {
        "type": "object",
        "properties": {"e": {"type": ["string", "null"]}},
        "required": ["e"],
        "additionalProperties": S,
    }
    assert json.loads(FORM.to_json(FORM.write({"k": "5", "t": "true"}), schema)) == {
        "k": "5",
        "t": "true",
        "e": None,  # left out by the template: null
    }


def test_a_required_nullable_member_may_be_left_out_by_the_grammar(vocab: Vocab) -> None:  # noqa: F811
    chosen = layout(NAME)
    schema = {
        "type": "object",
        "properties": {"city": S, "e": {"type": ["string", "null"]}},
        "required": ["city", "e"],
    }
    grammar = layout_grammar(chosen, [FunctionSpec("f", schema)], "one", parallel=False).gbnf
    for arguments in ({"city": "x", "e": None}, {"city": "x", "e": "y"}):
        assert accepts(vocab, grammar, chosen.text([("f", "", json.dumps(arguments))]))


def test_schemas_the_tree_cannot_hold_are_refused_not_a_server_error() -> None:
    chosen = layout(NAME)
    for schema in (
        {"type": "object", "properties": {"a/b": S}},
        {"type": "object", "properties": {"x" * 300: S}},
    ):
        with pytest.raises(SchemaNotSupported):
            layout_grammar(chosen, [FunctionSpec("f", schema)], "one", parallel=False)
    # A keyword of the wrong kind is ignored (no TypeError), a name with a space is fine.
    odd = {"type": "object", "properties": {"a": {"anyOf": 5}, "first name": S}}
    layout_grammar(chosen, [FunctionSpec("f", odd)], "one", parallel=False)
    text = FORM.write({"first name": "Ada"})
    assert json.loads(FORM.to_json(text, odd)) == {"first name": "Ada"}


def test_a_tag_too_long_to_be_one_ends_the_call_as_content() -> None:
    """The scanner gave up on a 250-character tag by saying the arguments were done: the
    call was closed with what came before, and its markup went into the content."""
    chosen = layout(NAME)
    functions = [FunctionSpec("f", {"type": "object"})]
    text = chosen.text([("f", "", json.dumps({"a": 1}))])
    cut = text.index(f"{M}</invoke>")
    text = text[:cut] + f"{M}<" + "k" * 250 + f">2{M}</k>" + text[cut:]
    parser = LayoutCallParser(chosen, functions)
    content = "".join(parser.feed(ch)[0] for ch in text) + parser.finish()
    assert parser.calls == []
    assert content == text[len(chosen.preamble) :]  # (the empty thinking block is not content)
