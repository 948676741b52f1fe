"""JSON schema to grammar: what is enforced, and what is refused by name."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from server.engine.grammar import (
    FunctionSpec,
    SchemaNotSupported,
    json_object_grammar,
    json_schema_grammar,
    tool_call_grammar,
)
from tests.grammar_accepts import Vocab, accepts, vocab  # noqa: F401 (a fixture)


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]
    partner: Person | None = None


def test_a_pydantic_schema_with_references_converts() -> None:
    grammar = json_schema_grammar(Person.model_json_schema())
    assert "root ::=" in grammar.gbnf
    assert '"\\"name\\""' in grammar.gbnf
    assert grammar.triggers == ()


def test_the_callers_schema_is_not_modified() -> None:
    schema = Person.model_json_schema()
    before = repr(schema)
    json_schema_grammar(schema)
    assert repr(schema) == before


@pytest.mark.parametrize(
    "schema, named",
    [
        ({"type": "integer", "minimum": 0}, "minimum"),
        (
            {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 2}}},
            "multipleOf",
        ),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "format": "email"}, "email"),
        ({"type": "string", "pattern": "[a-z]+"}, "pattern"),
        ({"$ref": "https://example.com/schema.json"}, "local references"),
        ({"not": {"type": "string"}}, "not"),
    ],
)
def test_unenforceable_keywords_are_refused_by_name(schema: dict[str, Any], named: str) -> None:
    with pytest.raises(SchemaNotSupported, match=named):
        json_schema_grammar(schema)


def test_json_object_grammar_is_an_object() -> None:
    assert "root ::= object" in json_object_grammar().gbnf


def test_tool_call_grammar_forced_lazy_and_parallel() -> None:
    functions = [
        FunctionSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}}),
        FunctionSpec("noop", {"type": "object", "properties": {}}),
    ]
    forced = tool_call_grammar(functions[:1], parallel=False)
    assert forced.triggers == ()
    assert "root ::= tool-call\n" in forced.gbnf + "\n"
    lazy = tool_call_grammar(functions, parallel=True, lazy=True)
    assert lazy.triggers == ("<tool_call>",)
    assert 'root ::= tool-call ("\\n" tool-call)*' in lazy.gbnf
    assert '"\\"get_weather\\""' in lazy.gbnf and '"\\"noop\\""' in lazy.gbnf


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "maxLength": 1001}, "maxLength"),
        ({"type": "string", "minLength": -1}, "minLength"),
        ({"type": "array", "maxItems": 5000}, "maxItems"),
        ({"type": "string", "pattern": "^a{2000}$"}, "pattern"),
        ({"type": "string", "pattern": "^(a{100}|b){300}$"}, "pattern"),
        ({"type": "string", "pattern": "^" + "a" * 3000 + "$"}, "pattern"),
        ({"enum": list(range(257))}, "enum"),
        ({"oneOf": [{"const": i} for i in range(257)]}, "oneOf"),
        ({"anyOf": []}, "grammar"),
    ],
)
def test_schemas_beyond_the_bounds_are_refused_by_name(schema: dict[str, Any], named: str) -> None:
    with pytest.raises(SchemaNotSupported, match=named):
        json_schema_grammar(schema)


def test_names_and_values_holding_quotes_and_backslashes_make_a_grammar() -> None:
    """(llama-cpp-python's converter wrote them unescaped: a grammar llama.cpp refused.)"""
    grammar = json_schema_grammar(
        {"type": "object", "properties": {'a"b\\c': {"enum": ['x"y', "p\\q"]}}}
    )
    # The key, as JSON writes it ("a\"b\\c"), in a GBNF literal.
    assert r'"\"a\\\"b\\\\c\""' in grammar.gbnf
    assert r'"\"x\\\"y\""' in grammar.gbnf


def test_the_bounds_themselves_are_accepted() -> None:
    json_schema_grammar({"type": "string", "maxLength": 1000})
    json_schema_grammar({"type": "array", "items": {"type": "integer"}, "maxItems": 1000})
    json_schema_grammar({"enum": [f"v{i}" for i in range(256)]})
    json_schema_grammar({"type": "string", "pattern": "^(a{10}){100}$"})


def test_deep_schemas_are_refused_without_recursion() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaNotSupported, match="nested deeper"):
        json_schema_grammar(schema)
    value: Any = "x"
    for _ in range(5000):
        value = [value]
    with pytest.raises(SchemaNotSupported, match="nested deeper"):
        json_schema_grammar({"const": value})


def test_each_functions_references_resolve_within_its_own_parameters() -> None:
    first = {
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/Item"}},
        "$defs": {"Item": {"type": "integer"}},
    }
    second = {
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/Item"}},
        "$defs": {"Item": {"type": "boolean"}},
    }
    grammar = tool_call_grammar(
        [FunctionSpec("a", first), FunctionSpec("b", second)], parallel=False
    )
    # Two different "Item" definitions, each reached from its own function.
    assert "integer" in grammar.gbnf and "boolean" in grammar.gbnf


def test_declared_and_additional_members_make_json(vocab: Vocab) -> None:  # noqa: F811
    """llama-cpp-python's converter wrote the members after declared ones as one or more
    with no comma before them: an object with `properties` and `additionalProperties` could
    only be written as text that is not JSON (checked by llama.cpp's own sampler)."""
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": {"type": "integer"},
    }
    grammar = json_schema_grammar(schema).gbnf
    for text in ('{"a": "x"}', '{"a": "x", "b": 1}', '{"a": "x", "b": 1, "c": 2, "d": 3}'):
        assert accepts(vocab, grammar, text), text
    assert not accepts(vocab, grammar, '{"a": "x" "c": 2}')
    assert not accepts(vocab, grammar, '{"a": "x", "c": "y"}')
