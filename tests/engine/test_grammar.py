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
