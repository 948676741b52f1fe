"""Relaxing a schema that is a hint: what a grammar cannot enforce goes, the rest stays, the
caller's schema is untouched, and the bounds that protect the server still hold."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from server.engine.grammar import SchemaNotSupported, check_schema, json_schema_grammar
from server.engine.grammar_limits import (
    MAX_BRANCHES,
    MAX_REPETITION,
    MAX_SCHEMA_DEPTH,
    GrammarLimitError,
)
from server.engine.relax import relax_schema


@pytest.mark.parametrize(
    "schema, relaxed, gone",
    [
        ({"type": "integer", "minimum": 0, "maximum": 9}, ["minimum at /", "maximum at /"], ()),
        ({"type": "number", "exclusiveMinimum": 0, "multipleOf": 2}, ["exclusiveMinimum"], ()),
        ({"type": "string", "format": "uri"}, ["format 'uri' at /"], ("format",)),
        ({"type": "string", "pattern": "[a-z]+"}, ["pattern at /"], ("pattern",)),
        ({"type": "string", "pattern": "^a{5000}$"}, ["pattern at /"], ("pattern",)),
        ({"type": "string", "maxLength": 524288}, ["maxLength 524288 at /"], ("maxLength",)),
        ({"type": "array", "maxItems": MAX_REPETITION + 1}, ["maxItems"], ("maxItems",)),
        ({"type": "array", "uniqueItems": True}, ["uniqueItems at /"], ("uniqueItems",)),
        ({"$ref": "https://example.com/s.json"}, ["$ref 'https://example.com/s.json'"], ()),
        ({"not": {"type": "string"}}, ["not at /"], ("not",)),
    ],
)
def test_what_a_grammar_cannot_enforce_is_relaxed_and_named(
    schema: dict[str, Any], relaxed: list[str], gone: tuple[str, ...]
) -> None:
    result, notes = relax_schema(schema)
    for expected in relaxed:
        assert any(expected in note for note in notes), notes
    for keyword in gone:
        assert keyword not in result
    check_schema(result)  # what is left, a strict check takes
    json_schema_grammar(result)


def test_what_a_grammar_enforces_stays() -> None:
    schema = {
        "type": "object",
        "properties": {
            "mode": {"enum": ["a", "b"]},
            "kind": {"const": "x"},
            "name": {"type": "string", "minLength": 1, "maxLength": 40},
            "when": {"type": "string", "format": "date"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "either": {"anyOf": [{"type": "integer"}, {"$ref": "#/$defs/thing"}]},
        },
        "required": ["mode"],
        "additionalProperties": False,
        "$defs": {"thing": {"type": "object", "properties": {"n": {"type": "number"}}}},
    }
    result, notes = relax_schema(schema)
    assert notes == [] and result == schema


def test_nested_bounds_are_relaxed_where_they_are_and_the_callers_schema_is_untouched() -> None:
    schema = {
        "type": "object",
        "properties": {
            "findings": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"line": {"type": "integer", "minimum": 1, "maximum": 10**9}},
                },
            }
        },
        "anyOf": [{"required": ["findings"]}, {"type": "object", "maxProperties": 2}],
    }
    before = copy.deepcopy(schema)
    result, notes = relax_schema(schema)
    assert schema == before
    assert "maximum at /properties/findings/items/properties/line" in notes
    assert "maxProperties at /anyOf/1" in notes
    line = result["properties"]["findings"]["items"]["properties"]["line"]
    assert line == {"type": "integer"}


def test_a_long_enum_becomes_its_values_type_and_a_long_anyof_any_value() -> None:
    words = [f"w{i}" for i in range(MAX_BRANCHES + 1)]
    result, notes = relax_schema({"enum": words})
    assert result == {"type": "string"} and notes == [f"enum of {len(words)} values at /"]
    mixed, _ = relax_schema({"enum": [*range(MAX_BRANCHES), "x", None]})
    assert mixed == {"type": ["integer", "string", "null"]}
    branches = [{"const": i} for i in range(MAX_BRANCHES + 1)]
    result, notes = relax_schema({"type": "object", "properties": {"b": {"anyOf": branches}}})
    assert result == {"type": "object", "properties": {"b": {}}}
    json_schema_grammar(result)


def test_false_and_non_schema_values_become_any_value() -> None:
    result, notes = relax_schema({"type": "object", "properties": {"a": False, "b": 3}})
    assert result["properties"] == {"a": {}, "b": {}}
    assert notes == ["false at /properties/a", "a non-schema value at /properties/b"]
    json_schema_grammar(result)


def test_the_bounds_that_protect_the_server_are_not_relaxed() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_SCHEMA_DEPTH + 5):
        deep = {"type": "array", "items": deep}
    with pytest.raises(GrammarLimitError, match="nested deeper"):
        relax_schema(deep)


def test_an_annotation_only_subschema_is_any_value_not_an_error() -> None:
    """Claude Code's Workflow tool has ``{"description": ...}`` as a property: any value."""
    schema = {"type": "object", "properties": {"input": {"description": "anything"}}}
    grammar = json_schema_grammar(schema)
    assert "input-kv ::=" in grammar.gbnf and "value" in grammar.gbnf
    with pytest.raises(SchemaNotSupported):  # strict still refuses what it cannot enforce
        json_schema_grammar({"type": "object", "properties": {"n": {"maximum": 3}}})
